"""Speculative decoding with a draft model (Leviathan et al., 2023; Chen et al., 2023)."""

from __future__ import annotations

from pydantic import Field

from specbench.decoding.drafters import ModelDrafter
from specbench.decoding.verify import SyntheticVerifier
from specbench.methods.in_process import ExecutionParams, InProcessMethod
from specbench.plugins import MethodModels, ModelRole


class SpeculativeParams(ExecutionParams):
    k: int = Field(4, ge=1, le=64, description="Draft tokens proposed per target call.")
    synthetic_acceptance: float | None = Field(
        None,
        ge=0,
        le=1,
        description="Timing only: accept each draft with this probability (dummy weights).",
    )


class SpeculativeMethod(InProcessMethod[SpeculativeParams]):
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
        self.proposer = ModelDrafter(models.require_draft(), k=params.k)
        if params.synthetic_acceptance is not None:
            self.verifier = SyntheticVerifier(params.synthetic_acceptance)
            self.synthetic = True
