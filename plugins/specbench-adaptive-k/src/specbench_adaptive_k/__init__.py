"""specbench plugin: speculative decoding with an adaptive draft length.

A plugin is a :class:`~specbench.plugins.DecodingMethod` subclass registered in the
``specbench.methods`` entry-point group (see this package's ``pyproject.toml``).
"""

from __future__ import annotations

from collections.abc import Sequence

from pydantic import Field, model_validator

from specbench.decoding.drafters import ModelDrafter, Proposal
from specbench.decoding.loop import speculative_generate
from specbench.decoding.verify import RejectionVerifier
from specbench.models.base import LanguageModel
from specbench.plugins import (
    DecodingMethod,
    GenerationRequest,
    GenerationResult,
    MethodModels,
    MethodParams,
    ModelRole,
)

__version__ = "0.1.0"


class AdaptiveParams(MethodParams):
    """Parameters are a pydantic model: specbench validates presets against it."""

    start_k: int = Field(4, ge=1, le=64, description="Draft length of the first step.")
    min_k: int = Field(1, ge=1, le=64, description="Never draft fewer tokens.")
    max_k: int = Field(12, ge=1, le=64, description="Never draft more tokens.")

    @model_validator(mode="after")
    def _ordered(self) -> AdaptiveParams:
        if not self.min_k <= self.start_k <= self.max_k:
            raise ValueError("need min_k <= start_k <= max_k")
        return self


class AdaptiveDrafter(ModelDrafter):
    """A draft model whose ``k`` grows by 2 after full acceptance and shrinks by 1 otherwise."""

    def __init__(self, model: LanguageModel, params: AdaptiveParams) -> None:
        super().__init__(model, k=params.start_k)
        self.params = params
        self.used: list[int] = []

    def start(self, request: GenerationRequest) -> None:
        super().start(request)
        self.k = self.params.start_k
        self.used = []

    def propose(self, sequence: Sequence[int], max_tokens: int) -> Proposal:
        self.used.append(min(self.k, max_tokens))
        return super().propose(sequence, max_tokens)

    def observe(self, proposed: int, accepted: int) -> None:
        if proposed == 0:
            return
        step = 2 if accepted == proposed else -1
        self.k = max(self.params.min_k, min(self.params.max_k, self.k + step))


class AdaptiveSpeculativeMethod(DecodingMethod):
    """Speculative sampling with a draft length that follows recent acceptance."""

    name = "adaptive-speculative"
    description = "Speculative decoding whose draft length adapts to acceptance (example plugin)."
    needs = frozenset({ModelRole.TARGET, ModelRole.DRAFT})
    Params = AdaptiveParams

    def __init__(self, params: AdaptiveParams, models: MethodModels) -> None:
        super().__init__(params, models)
        self.drafter = AdaptiveDrafter(models.require_draft(), params)
        self.verifier = RejectionVerifier()

    def generate(self, request: GenerationRequest) -> GenerationResult:
        result = speculative_generate(request, self.models.target, self.drafter, self.verifier)
        used = self.drafter.used
        result.stats.extra["mean_k"] = sum(used) / len(used) if used else 0.0
        result.stats.extra["final_k"] = float(self.drafter.k)
        return result
