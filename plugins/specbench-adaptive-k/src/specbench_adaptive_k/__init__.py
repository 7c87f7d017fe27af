"""specbench plugin: speculative decoding with an adaptive draft length.

A plugin is a :class:`~specbench.plugins.DecodingMethod` subclass registered in the
``specbench.methods`` entry-point group (see this package's ``pyproject.toml``).
"""

from __future__ import annotations

from collections.abc import Sequence

from pydantic import Field, model_validator

from specbench.api import (
    ExecutionParams,
    GenerationRequest,
    InProcessMethod,
    LanguageModel,
    MethodModels,
    ModelDrafter,
    ModelRole,
    Outcome,
    Sessions,
    Slot,
)

__version__ = "0.1.0"


class AdaptiveParams(ExecutionParams):
    """Parameters are a pydantic model: specbench validates presets against it. Subclassing
    ``ExecutionParams`` gives the method the engine and batch fields every in-process method
    has (``engine = "static"``, ``batch_size = 4``, ...)."""

    start_k: int = Field(4, ge=1, le=64, description="Draft length of the first step.")
    min_k: int = Field(1, ge=1, le=64, description="Never draft fewer tokens.")
    max_k: int = Field(12, ge=1, le=64, description="Never draft more tokens.")

    @model_validator(mode="after")
    def _ordered(self) -> AdaptiveParams:
        if not self.min_k <= self.start_k <= self.max_k:
            raise ValueError("need min_k <= start_k <= max_k")
        return self


class AdaptiveDrafter(ModelDrafter):
    """A draft model whose ``k`` (per row) grows by 2 after full acceptance and shrinks by 1
    otherwise."""

    def __init__(self, model: LanguageModel, params: AdaptiveParams) -> None:
        super().__init__(model, k=params.start_k)
        self.params = params
        self.max_chain = params.max_k  # the longest chain it can draft
        self.row_k: list[int] = []
        self.used: list[list[int]] = []

    def start(self, requests: Sequence[GenerationRequest], sessions: Sessions) -> None:
        super().start(requests, sessions)
        self.row_k = [self.params.start_k] * len(requests)
        self.used = [[] for _ in requests]

    def limit(self, slot: Slot) -> int:
        k = self.row_k[slot.row]
        self.used[slot.row].append(min(k, slot.budget))
        return k

    def observe(self, outcomes: Sequence[Outcome]) -> None:
        for outcome in outcomes:
            if outcome.proposed == 0:
                continue
            step = 2 if outcome.accepted == outcome.proposed else -1
            k = self.row_k[outcome.row] + step
            self.row_k[outcome.row] = max(self.params.min_k, min(self.params.max_k, k))

    def stats(self, row: int) -> dict[str, float]:
        used = self.used[row]
        return {
            "mean_k": sum(used) / len(used) if used else 0.0,
            "final_k": float(self.row_k[row]),
        }


class AdaptiveSpeculativeMethod(InProcessMethod[AdaptiveParams]):
    """Speculative sampling with a draft length that follows recent acceptance: it supplies
    a proposer and leaves decoding to specbench's execution core."""

    name = "adaptive-speculative"
    description = "Speculative decoding whose draft length adapts to acceptance (example plugin)."
    needs = frozenset({ModelRole.TARGET, ModelRole.DRAFT})
    Params = AdaptiveParams

    def __init__(self, params: AdaptiveParams, models: MethodModels) -> None:
        super().__init__(params, models)
        self.proposer = AdaptiveDrafter(models.require_draft(), params)
