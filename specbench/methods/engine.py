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


def static_decoder(
    model: LanguageModel, params: EngineParams, lengths: tuple[int, ...]
) -> StaticDecoder:
    """A static decoder for ``model``; graphs for the given step lengths when enabled."""
    from specbench.models.hf import HFLanguageModel

    if not isinstance(model, HFLanguageModel):
        raise PluginError(
            f"engine 'static' needs a Hugging Face or dummy model, not {model.name}",
            "use engine = 'eager' with toy models",
        )
    return StaticDecoder(model, params.static_max_len, lengths if params.cuda_graphs else ())
