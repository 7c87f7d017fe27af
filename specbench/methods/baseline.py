"""Autoregressive decoding: one target call per token, the reference every speedup divides by."""

from __future__ import annotations

from pydantic import Field

from specbench.decoding.batch import PerRowDrafter, batched_generate
from specbench.decoding.drafters import NoDrafter
from specbench.decoding.fast import fast_generate
from specbench.decoding.loop import speculative_generate
from specbench.decoding.verify import RejectionVerifier
from specbench.methods.engine import EngineParams, static_decoder
from specbench.plugins import (
    DecodingMethod,
    GenerationRequest,
    GenerationResult,
    ModelRole,
)


class BaselineParams(EngineParams):
    batch_size: int = Field(1, ge=1, le=256, description="Prompts decoded together.")


class BaselineMethod(DecodingMethod):
    """Plain autoregressive decoding with the target's KV cache.

    It is the shared loop with a drafter that proposes nothing, so each step samples one
    token from the target through the same logits processing every other method uses.
    """

    name = "baseline"
    description = "Autoregressive decoding with the target alone (the speedup reference)."
    needs = frozenset({ModelRole.TARGET})
    Params = BaselineParams

    def generate(self, request: GenerationRequest) -> GenerationResult:
        params = self.params
        assert isinstance(params, BaselineParams)
        if params.engine == "static":  # the model's shared decoder: graphs made once per run
            target = static_decoder(self.models.target, params, (1,))
            return fast_generate(request, target, None, 0, RejectionVerifier())
        return speculative_generate(request, self.models.target, NoDrafter(), RejectionVerifier())

    def generate_batch(self, requests: list[GenerationRequest]) -> list[GenerationResult]:
        return batched_generate(requests, self.models.target, PerRowDrafter())
