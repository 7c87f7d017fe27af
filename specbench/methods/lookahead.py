"""Lookahead decoding (Fu et al., ICML 2024): Jacobi iterations and an n-gram pool, no draft."""

from __future__ import annotations

from pydantic import Field

from specbench.decoding.lookahead import LookaheadProposer
from specbench.methods.in_process import ExecutionParams, InProcessMethod
from specbench.plugins import MethodModels, ModelRole


class LookaheadParams(ExecutionParams):
    window: int = Field(5, ge=1, le=64, description="W: guessed future tokens (Jacobi window).")
    ngram: int = Field(3, ge=2, le=16, description="N: n-gram length collected and verified.")
    pool_size: int = Field(5, ge=1, le=64, description="G: n-grams verified per step at most.")


class LookaheadMethod(InProcessMethod[LookaheadParams]):
    """Lookahead decoding; exact at any temperature (the target's samples walk the tree).

    Records add ``lookahead_pool_size``, ``lookahead_hit_rate`` (steps with a pool candidate)
    and ``lookahead_candidates`` (n-grams verified per step).
    """

    name = "lookahead"
    description = "Lookahead decoding: Jacobi window + n-gram pool in one tree call (exact)."
    needs = frozenset({ModelRole.TARGET})
    Params = LookaheadParams

    def __init__(self, params: LookaheadParams, models: MethodModels) -> None:
        super().__init__(params, models)
        self.proposer = LookaheadProposer(params.window, params.ngram, params.pool_size)
