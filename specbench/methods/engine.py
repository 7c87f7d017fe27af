"""The ``engine`` option shared by methods that can decode with static caches and CUDA graphs."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from specbench.errors import PluginError
from specbench.models.base import LanguageModel
from specbench.models.static import StaticDecoder
from specbench.plugins import MethodParams


class EngineParams(MethodParams):
    engine: Literal["eager", "static"] = Field(
        "eager",
        description="static: preallocated KV cache, CUDA graphs on a GPU, one sync per step.",
    )
    static_max_len: int = Field(4096, ge=16, description="Positions in the static cache.")
    cuda_graphs: bool = Field(True, description="Capture fixed-length steps (static, CUDA).")
    compile: bool = Field(
        False,
        description="torch.compile the captured steps: fewer, fused kernels; minutes to start.",
    )


def static_decoder(
    model: LanguageModel, params: EngineParams, lengths: tuple[int, ...]
) -> StaticDecoder:
    """The static decoder of ``model`` for these settings; graphs for ``lengths`` when enabled.

    Decoders are shared by every method on the same model (methods run one at a time, and
    each generate call resets it), so a cache, its graphs and any compilation are made once
    per run rather than once per method.
    """
    from specbench.models.hf import HFLanguageModel

    if not isinstance(model, HFLanguageModel):
        raise PluginError(
            f"engine 'static' needs a Hugging Face or dummy model, not {model.name}",
            "use engine = 'eager' with toy models",
        )
    decoders: dict[tuple[int, bool, bool], StaticDecoder] = model.__dict__.setdefault(
        "_static_decoders", {}
    )
    key = (params.static_max_len, params.cuda_graphs, params.compile)
    if key not in decoders:
        decoders[key] = StaticDecoder(model, params.static_max_len, compile=params.compile)
    decoder = decoders[key]
    if params.cuda_graphs:
        decoder.graph_lengths.update(lengths)
    return decoder
