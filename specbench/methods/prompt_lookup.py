"""Prompt lookup decoding: drafts copied from earlier in the prompt or output, no draft model."""

from __future__ import annotations

from pydantic import Field, model_validator

from specbench.decoding.batch import PerRowDrafter, batched_generate
from specbench.decoding.drafters import NgramDrafter
from specbench.decoding.loop import speculative_generate
from specbench.decoding.verify import RejectionVerifier
from specbench.plugins import (
    DecodingMethod,
    GenerationRequest,
    GenerationResult,
    MethodModels,
    MethodParams,
    ModelRole,
)


class PromptLookupParams(MethodParams):
    k: int = Field(10, ge=1, le=64, description="Tokens copied per target call at most.")
    max_ngram: int = Field(3, ge=1, le=16, description="Longest n-gram matched.")
    min_ngram: int = Field(1, ge=1, le=16, description="Shortest n-gram matched.")
    batch_size: int = Field(1, ge=1, le=256, description="Prompts decoded together.")

    @model_validator(mode="after")
    def _ordered(self) -> PromptLookupParams:
        if self.min_ngram > self.max_ngram:
            raise ValueError("need min_ngram <= max_ngram")
        return self


class PromptLookupMethod(DecodingMethod):
    """Draft by n-gram lookup in the sequence, verify with the shared (exact) verifier."""

    name = "prompt-lookup"
    description = "N-gram lookup in prompt and output as the draft; no draft model (exact)."
    needs = frozenset({ModelRole.TARGET})
    Params = PromptLookupParams

    def __init__(self, params: PromptLookupParams, models: MethodModels) -> None:
        super().__init__(params, models)
        self.drafter = NgramDrafter(params.k, params.max_ngram, params.min_ngram)
        self.verifier = RejectionVerifier()

    def generate(self, request: GenerationRequest) -> GenerationResult:
        result = speculative_generate(request, self.models.target, self.drafter, self.verifier)
        if self.drafter.lookups:
            result.stats.extra["lookup_hit_rate"] = self.drafter.hits / self.drafter.lookups
        return result

    @classmethod
    def replay_proposer(cls, params: MethodParams) -> NgramDrafter:
        assert isinstance(params, PromptLookupParams)
        return NgramDrafter(params.k, params.max_ngram, params.min_ngram)

    def generate_batch(self, requests: list[GenerationRequest]) -> list[GenerationResult]:
        return batched_generate(requests, self.models.target, PerRowDrafter(self.drafter))
