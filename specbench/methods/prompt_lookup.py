"""Prompt lookup decoding: drafts copied from earlier in the prompt or output, no draft model."""

from __future__ import annotations

from pydantic import Field, model_validator

from specbench.decoding.drafters import NgramDrafter
from specbench.methods.in_process import ExecutionParams, InProcessMethod
from specbench.plugins import MethodModels, MethodParams, ModelRole


class PromptLookupParams(ExecutionParams):
    k: int = Field(10, ge=1, le=64, description="Tokens copied per target call at most.")
    max_ngram: int = Field(3, ge=1, le=16, description="Longest n-gram matched.")
    min_ngram: int = Field(1, ge=1, le=16, description="Shortest n-gram matched.")

    @model_validator(mode="after")
    def _ordered(self) -> PromptLookupParams:
        if self.min_ngram > self.max_ngram:
            raise ValueError("need min_ngram <= max_ngram")
        return self


class PromptLookupMethod(InProcessMethod[PromptLookupParams]):
    """Draft by n-gram lookup in the sequence, verify with the shared (exact) verifier.

    Records add ``lookup_hit_rate`` (steps whose lookup found a continuation).
    """

    name = "prompt-lookup"
    description = "N-gram lookup in prompt and output as the draft; no draft model (exact)."
    needs = frozenset({ModelRole.TARGET})
    Params = PromptLookupParams

    def __init__(self, params: PromptLookupParams, models: MethodModels) -> None:
        super().__init__(params, models)
        self.proposer = self.replay_proposer(params)

    @classmethod
    def replay_proposer(cls, params: MethodParams) -> NgramDrafter:
        assert isinstance(params, PromptLookupParams)  # replay hands over validated Params
        return NgramDrafter(params.k, params.max_ngram, params.min_ngram)
