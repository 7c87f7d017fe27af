"""Pydantic specs of the models a preset names, one class per backend."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field


class _Spec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ToyModelSpec(_Spec):
    """An analytic toy model (see :mod:`specbench.models.toy`)."""

    backend: Literal["toy"] = "toy"
    vocab_size: int = Field(48, ge=4, le=4096)
    order: int = Field(1, ge=0, le=3, description="How many previous tokens condition the next.")
    seed: int = Field(0, ge=0)
    sharpness: float = Field(2.0, gt=0, description="Scale of the random logits.")
    distance: float = Field(
        0.0, ge=0, description="Noise added to the logits; a draft's distance from the target."
    )
    noise_seed: int = Field(1, ge=0)
    eos_bias: float | None = Field(
        None, description="Logit offset of end-of-sequence; unset means the model never stops."
    )
    forward_ms: float = Field(0.0, ge=0, description="Simulated cost of one forward call.")
    token_ms: float = Field(0.0, ge=0, description="Simulated cost per processed token.")


ModelSpec = Annotated[ToyModelSpec, Field(discriminator="backend")]


class ModelsSpec(_Spec):
    """The target every method decodes for, and an optional draft."""

    target: ModelSpec
    draft: ModelSpec | None = None
