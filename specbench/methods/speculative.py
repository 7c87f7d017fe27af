"""Speculative decoding with a draft model (Leviathan et al., 2023; Chen et al., 2023)."""

from __future__ import annotations

from pydantic import Field

from specbench.decoding.batch import BatchModelDrafter, batched_generate
from specbench.decoding.drafters import ModelDrafter
from specbench.decoding.fast import fast_generate
from specbench.decoding.loop import speculative_generate
from specbench.decoding.verify import RejectionVerifier, SyntheticVerifier
from specbench.methods.engine import EngineParams, static_decoder
from specbench.plugins import (
    DecodingMethod,
    GenerationRequest,
    GenerationResult,
    MethodModels,
    ModelRole,
)


class SpeculativeParams(EngineParams):
    k: int = Field(4, ge=1, le=64, description="Draft tokens proposed per target call.")
    batch_size: int = Field(1, ge=1, le=256, description="Prompts decoded together.")
    synthetic_acceptance: float | None = Field(
        None,
        ge=0,
        le=1,
        description="Timing only: accept each draft with this probability (dummy weights).",
    )


class SpeculativeMethod(DecodingMethod):
    """Draft ``k`` tokens with the draft model, verify them in one target call.

    Exact speculative sampling at any temperature, top-k and top-p (draft and target go
    through the same logits processing); at temperature 0 it is greedy speculative decoding
    and its output equals greedy decoding token for token.
    """

    name = "speculative"
    description = "Draft model + modified rejection sampling (exact; greedy at temperature 0)."
    needs = frozenset({ModelRole.TARGET, ModelRole.DRAFT})
    Params = SpeculativeParams
    accept_length_model = "chain_analytic"

    def __init__(self, params: SpeculativeParams, models: MethodModels) -> None:
        super().__init__(params, models)
        self.k = params.k
        self.drafter = ModelDrafter(models.require_draft(), k=params.k)
        self.verifier: RejectionVerifier | SyntheticVerifier = RejectionVerifier()
        if params.synthetic_acceptance is not None:
            self.verifier = SyntheticVerifier(params.synthetic_acceptance)
            self.synthetic = True

    def generate(self, request: GenerationRequest) -> GenerationResult:
        if self.params.engine == "static":  # type: ignore[attr-defined]
            return self._static_generate(request)
        return speculative_generate(request, self.models.target, self.drafter, self.verifier)

    def _static_generate(self, request: GenerationRequest) -> GenerationResult:
        params = self.params
        assert isinstance(params, SpeculativeParams)
        # The models' shared decoders: caches, graphs and compilation made once per run.
        target = static_decoder(self.models.target, params, (self.k + 1,))
        draft = static_decoder(self.models.require_draft(), params, (1,))
        return fast_generate(request, target, draft, self.k, self.verifier)

    def generate_batch(self, requests: list[GenerationRequest]) -> list[GenerationResult]:
        drafter = BatchModelDrafter(self.models.require_draft(), self.k)
        return batched_generate(requests, self.models.target, drafter, self.verifier)
