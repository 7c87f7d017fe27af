"""Loading a transformers model: dtype, device, quantization, fast kernels, and hub or file
errors as one line. Local folders, catalogue names and hub ids all go through the same
``from_pretrained`` call.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch

from specbench.errors import ModelLoadError
from specbench.install_hints import install_extra
from specbench.models.hf.library import quiet_transformers, require_transformers
from specbench.models.hf.model import HFLanguageModel
from specbench.models.hf.numerics import RowStableLinear, make_batch_invariant
from specbench.models.hf.tokenizer import HFTokenizer
from specbench.models.specs import (
    Bnb4BitSpec,
    Bnb8BitSpec,
    DummyModelSpec,
    HFModelSpec,
    LinearKernel,
    QuantoSpec,
    packs_for_few_rows,
)

_DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}


def resolve_dtype(spec: HFModelSpec | DummyModelSpec, device: torch.device) -> torch.dtype:
    """``auto``: bfloat16 on CUDA with bf16 support and on CPUs with bf16 instructions."""
    if spec.dtype != "auto":
        return _DTYPES[spec.dtype]
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if device.type == "cpu" and _cpu_has_bf16():
        return torch.bfloat16
    return torch.float32


def resolve_device(spec: HFModelSpec | DummyModelSpec) -> torch.device:
    if spec.device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(spec.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ModelLoadError(
            f"device {spec.device} requested but CUDA is not available",
            'set device = "cpu" or "auto"',
        )
    return device


def _cpu_has_bf16() -> bool:
    from specbench.hardware import cpu_flags

    return bool({"avx512_bf16", "amx_bf16"} & set(cpu_flags()))


def quantization_config(spec: HFModelSpec) -> Any:
    """The transformers quantization config a spec asks for (``None`` for full precision)."""
    q = spec.quantization
    if q is None:
        return None
    transformers = require_transformers()
    if isinstance(q, Bnb4BitSpec):
        return transformers.BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type=q.quant_type,
            bnb_4bit_compute_dtype=_DTYPES[q.compute_dtype],
            bnb_4bit_use_double_quant=q.double_quant,
        )
    if isinstance(q, Bnb8BitSpec):
        return transformers.BitsAndBytesConfig(load_in_8bit=True)
    if isinstance(q, QuantoSpec):
        return transformers.QuantoConfig(weights=q.weights)
    raise ModelLoadError(f"unknown quantization {q!r}")


_QUANT_PACKAGES = {
    "bnb-4bit": "bitsandbytes",
    "bnb-8bit": "bitsandbytes",
    "quanto": "optimum-quanto",
}


def load_hf_tokenizer(
    spec: HFModelSpec, source: str, local_only: bool = False, eos_extra: Sequence[int] = ()
) -> HFTokenizer:
    """The tokenizer of a spec (from ``spec.tokenizer``, else next to the weights)."""
    transformers = require_transformers()
    location = spec.tokenizer or source
    kwargs: dict[str, Any] = {"revision": spec.revision, "local_files_only": local_only}
    if spec.gguf_file and spec.tokenizer is None:
        kwargs["gguf_file"] = spec.gguf_file
    with quiet_transformers(), _hub_errors(location):
        tokenizer = transformers.AutoTokenizer.from_pretrained(
            location, trust_remote_code=spec.trust_remote_code, **kwargs
        )
    return HFTokenizer(tokenizer, eos_extra)


def load_hf_model(
    spec: HFModelSpec, source: str, name: str, role: str = "target"
) -> HFLanguageModel:
    """Load weights and tokenizer; ``source`` is a local folder or a hub id. ``role``
    (``target``, ``draft``) chooses specbench's kernel layout where ``spec.linear_layout``
    is ``auto`` (:func:`~specbench.models.specs.packs_for_few_rows`)."""
    transformers = require_transformers()
    device = resolve_device(spec)
    dtype = resolve_dtype(spec, device)
    kwargs: dict[str, Any] = {
        "revision": spec.revision,
        "dtype": dtype,
        "trust_remote_code": spec.trust_remote_code,
    }
    if spec.gguf_file:
        kwargs["gguf_file"] = spec.gguf_file
    if spec.batch_invariant:
        kwargs["attn_implementation"] = "eager"
    elif spec.attn_implementation:
        kwargs["attn_implementation"] = spec.attn_implementation
    quant = quantization_config(spec)
    if quant is not None:
        kwargs["quantization_config"] = quant
        kwargs["device_map"] = str(device)
    with quiet_transformers(), _hub_errors(source), _quant_errors(spec):
        model = transformers.AutoModelForCausalLM.from_pretrained(source, **kwargs)
    if quant is None:
        model.to(device)
    model.eval()
    shipped_attention = (
        spec.attn_implementation or "sdpa"
        if spec.batch_invariant
        else getattr(model.config, "_attn_implementation", None)
    )
    kernels = fast_kernels(
        model,
        spec.batch_invariant,
        spec.prepack and quant is None,
        spec.linear_kernel,
        packs_for_few_rows(spec.linear_layout, role),
    )
    eos = model.generation_config.eos_token_id if model.generation_config else None
    eos_ids = [eos] if isinstance(eos, int) else list(eos or [])
    tokenizer = load_hf_tokenizer(spec, source, eos_extra=eos_ids)
    info = {
        "source": source,
        "revision": spec.revision,
        "gguf_file": spec.gguf_file,
        "quantization": spec.quantization.model_dump() if spec.quantization else None,
        "attn_implementation": getattr(model.config, "_attn_implementation", None),
        # What transformers runs without specbench's kernels (its default when a row-stable
        # eager attention replaced it).
        "shipped_attention": shipped_attention,
        "batch_invariant": spec.batch_invariant,
        **kernels,
    }
    return checked(HFLanguageModel(model, tokenizer, name=name, info=info))


def fast_kernels(
    model: torch.nn.Module,
    batch_invariant: bool,
    prepack: bool,
    linear_kernel: LinearKernel = "auto",
    few_rows: bool = False,
) -> dict[str, Any]:
    """Make ``model`` batch-invariant and give its linear layers packed weights on
    ``linear_kernel``, as asked (in that order: packing replaces the row-stable layers with
    packed ones, which are row stable too), and its decoder layers the fused operations
    where specbench's kernel runs them; what the run header records about it. ``few_rows``:
    specbench's kernel packs for calls of one or two rows (the same results, bit for bit)."""
    from specbench.models.hf.fused_layers import fuse_decoder_layers
    from specbench.models.packed import pack_linear_layers

    if batch_invariant:
        make_batch_invariant(model)
    if not prepack:
        return {"packed_linear_layers": 0, "packed_row_floor": None, "fused_layers": 0}
    packed = pack_linear_layers(model, (torch.nn.Linear, RowStableLinear), linear_kernel, few_rows)
    # Where the linear layers run specbench's kernel, the glue between them does too.
    return {**packed, "fused_layers": fuse_decoder_layers(model)}


def checked(model: HFLanguageModel) -> HFLanguageModel:
    """A batch-invariant model with the result of checking that on this CPU in its info."""
    if model.info.get("batch_invariant"):
        from specbench.models.invariance import check_batch_invariance

        model.info["batch_invariance"] = check_batch_invariance(model).as_dict()
    return model


@contextlib.contextmanager
def _hub_errors(source: str) -> Iterator[None]:
    """Turn transformers' loading errors into one line that says what to do."""
    try:
        yield
    except (OSError, ValueError) as error:
        if Path(source).exists():
            raise ModelLoadError(
                f"cannot load {source}: {_first_line(error)}",
                "check that the folder holds a transformers checkpoint (config.json and weights)",
            ) from error
        if isinstance(error, ValueError):
            raise ModelLoadError(
                f"cannot load '{source}': {_first_line(error)}",
                "check the model id and revision",
            ) from error
        raise ModelLoadError(
            f"cannot load '{source}': it is not a local folder or fetched catalogue model, and "
            f"the Hugging Face hub could not provide it ({_first_line(error)})",
            f"download it where the hub is reachable (huggingface-cli download {source}) "
            "or point model at a local folder",
        ) from error


@contextlib.contextmanager
def _quant_errors(spec: HFModelSpec) -> Iterator[None]:
    try:
        yield
    except (ImportError, ModuleNotFoundError) as error:
        if spec.quantization is None:
            raise
        package = _QUANT_PACKAGES[spec.quantization.method]
        raise ModelLoadError(
            f"{spec.quantization.method} quantization needs {package}: {_first_line(error)}",
            f"{install_extra('quant')} (or pip install {package})",
        ) from error


def _first_line(error: BaseException) -> str:
    lines = str(error).strip().splitlines()
    return lines[0] if lines else type(error).__name__
