"""EAGLE-3: a trained head on the target's own features drafts chains or EAGLE-2 trees.

The head reads the inputs of three target layers, recorded during the verification call
(the target never runs twice). Chains go through the shared exact verifier, trees through
the shared tree walk; both are exact (greedy: token for token equal to greedy decoding).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import Field

from specbench.decoding.eagle import Eagle3Drafter, Eagle3TreeProposer, HeadState
from specbench.decoding.types import GenerationRequest
from specbench.errors import SpecbenchError
from specbench.heads.eagle3 import Eagle3Head, aux_layers, check_fits, load_eagle3
from specbench.heads.eagle3_training import Eagle3Training, train_eagle3
from specbench.heads.store import Trainer
from specbench.methods.in_process import OneSequenceParams
from specbench.methods.trained_heads import TrainedHeadsMethod
from specbench.plugins import GenerationResult, MethodModels, ModelRole


class Eagle3Params(OneSequenceParams):
    head: str | None = Field(
        None,
        description="EAGLE-3 head: a folder or hub id (speculators or EAGLE layout); unset: "
        "the head `specbench train` trained for this target with the settings below.",
    )
    tree: bool = Field(False, description="EAGLE-2 dynamic trees instead of chains.")
    k: int = Field(4, ge=1, le=16, description="Chain: drafts per step.")
    sample_drafts: bool = Field(
        True, description="Chain, temperature > 0: sample drafts (q reported) instead of argmax."
    )
    top_k: int = Field(4, ge=1, le=16, description="Tree: children per node, nodes per level.")
    depth: int = Field(5, ge=1, le=16, description="Tree: levels.")
    budget: int = Field(16, ge=1, le=256, description="Tree: nodes verified per target call.")
    draft_vocab: int = Field(8192, ge=64, description="Training: draft vocabulary size.")
    intermediate_size: int = Field(2048, ge=16, description="Training: the layer's MLP width.")
    train_texts: int = Field(160, ge=10, description="Training: GSM8K train questions.")
    answer_tokens: int = Field(
        160, ge=8, description="Training: target-generated answer tokens per question."
    )
    train_steps: int = Field(400, ge=1, description="Training: optimizer steps.")
    seed: int = Field(0, ge=0, description="Training: seed.")

    def training(self) -> Eagle3Training:
        return Eagle3Training(
            draft_vocab=self.draft_vocab,
            intermediate_size=self.intermediate_size,
            texts=self.train_texts,
            answer_tokens=self.answer_tokens,
            steps=self.train_steps,
            seed=self.seed,
        )


class Eagle3Method(TrainedHeadsMethod[Eagle3Params]):
    """An EAGLE-3 head drafting chains (shared verifier) or EAGLE-2 trees (shared tree walk)."""

    name = "eagle3"
    description = "EAGLE-3 head on the target's features: chains or EAGLE-2 trees (exact)."
    needs = frozenset({ModelRole.TARGET})
    Params = Eagle3Params
    in_all = False
    not_in_all_reason = "needs a trained head: set params.head, or run `specbench train`"
    kind = "eagle3"

    def __init__(self, params: Eagle3Params, models: MethodModels) -> None:
        self.state: HeadState | None = None
        self._layers: tuple[int, ...] = ()
        super().__init__(params, models)

    @property
    def head(self) -> Eagle3Head | None:
        return None if self.state is None else self.state.head

    def given(self) -> str | None:
        return self.params.head

    def load(self, source: str) -> Eagle3Head:
        return load_eagle3(source)

    def training(self) -> Eagle3Training:
        return self.params.training()

    def trainer(self) -> Trainer:
        return train_eagle3

    def describe(self, folder: Path, meta: dict[str, Any]) -> str:
        accuracy = ", ".join(f"{a:.2f}" for a in meta["holdout_top1"])
        return f"EAGLE-3 head {folder.name} (holdout top-1 per draft step: {accuracy})"

    def use(self, heads: Eagle3Head, source: str) -> None:
        target, states = self.models.target, self.states
        shape = states.architecture()
        check_fits(heads, shape.hidden_size, shape.vocab_size, shape.num_layers, source)
        # The target's dtype: drafts are deterministic or their q is reported, so the
        # head's precision changes which tokens are proposed, never exactness.
        heads.to(target.device, states.weights_dtype)
        self._layers = aux_layers(heads, shape.num_layers)
        self.state = HeadState(heads, states, target.vocab_size)
        params = self.params
        if params.tree:
            self.proposer = Eagle3TreeProposer(
                self.state, params.top_k, params.depth, params.budget
            )
        else:
            self.proposer = Eagle3Drafter(self.state, params.k, params.sample_drafts)

    def decode(self, requests: list[GenerationRequest]) -> list[GenerationResult]:
        state = self.state
        if state is None:
            raise SpecbenchError("eagle3 was used before prepare()", "call prepare(context)")
        with self.states.capture_layer_inputs(self._layers) as capture:
            state.capture = capture
            try:
                return super().decode(requests)
            finally:
                state.capture = None

    def finish(self, results: list[GenerationResult]) -> None:
        state = self.state
        if state is not None and state.recomputes:
            for result in results:
                result.stats.extra["feature_recomputes"] = float(state.recomputes)
            state.recomputes = 0
