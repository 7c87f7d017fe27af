"""Medusa: trained heads on the target's last hidden state propose the next tokens.

The verification call already computes the hidden state of the position that produced the
token just committed; the heads turn it into the next ``k`` draft tokens (head ``i`` guesses
the token ``i + 1`` places after the committed one). Drafts are the heads' top-1 tokens, a
deterministic proposal, so the shared verifier keeps the method exact at any temperature
(greedy: equal to greedy decoding). Medusa's own "typical acceptance" is lossy: it is the
separate method ``medusa-typical``, never marked exact.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from pydantic import Field, model_validator
from typing_extensions import TypeVar

from specbench.decoding.proposers import Draft, Outcome, Proposal, RowProposer, Sessions, Slot
from specbench.decoding.tree import Candidate, TokenTree, TreeProposer, best_subtree
from specbench.decoding.types import GenerationRequest
from specbench.decoding.verify import RejectionVerifier, TypicalAcceptanceVerifier, Verifier
from specbench.errors import SpecbenchError
from specbench.heads.medusa import MedusaHeads, check_fits, load_medusa
from specbench.heads.medusa_training import MedusaTraining, train_medusa
from specbench.heads.store import Trainer
from specbench.methods.in_process import OneSequenceParams
from specbench.methods.trained_heads import TrainedHeadsMethod
from specbench.models.capabilities import StateCapture
from specbench.plugins import GenerationResult, MethodModels, ModelRole


class MedusaParams(OneSequenceParams):
    heads: str | None = Field(
        None,
        description="Medusa heads: a folder or a hub id (Medusa's hub layout); unset: heads "
        "`specbench train` trained for this target with the settings below.",
    )
    k: int | None = Field(None, ge=1, le=16, description="Heads used per step (default: all).")
    tree: bool = Field(False, description="Candidate trees (top_k per head) instead of a chain.")
    top_k: int = Field(4, ge=1, le=32, description="Tree: candidates per head.")
    budget: int = Field(16, ge=1, le=256, description="Tree: nodes verified per target call.")
    num_heads: int = Field(3, ge=1, le=8, description="Training: heads to train.")
    num_layers: int = Field(1, ge=1, le=4, description="Training: residual blocks per head.")
    train_texts: int = Field(
        200, ge=10, description="Training: GSM8K train questions the target answers."
    )
    answer_tokens: int = Field(
        160, ge=8, description="Training: target-generated answer tokens per question."
    )
    train_steps: int = Field(300, ge=1, description="Training: optimizer steps.")
    train_batch: int = Field(128, ge=8, description="Training: positions per head and step.")
    seed: int = Field(0, ge=0, description="Training: seed.")

    def training(self) -> MedusaTraining:
        return MedusaTraining(
            num_heads=self.num_heads,
            num_layers=self.num_layers,
            texts=self.train_texts,
            answer_tokens=self.answer_tokens,
            steps=self.train_steps,
            batch=self.train_batch,
            seed=self.seed,
        )


class MedusaDrafter(RowProposer):
    """Top-1 tokens of the heads at the target's last committed hidden state: the state at
    the position whose logits gave the token just committed, which the verification call
    computed already, so the heads need no target call of their own."""

    wants_target_hidden = True

    def __init__(self, heads: MedusaHeads, k: int, vocab_size: int) -> None:
        super().__init__()
        self.heads = heads
        self.k = k
        self.max_chain = k
        self.vocab_size = vocab_size
        self._hidden: list[torch.Tensor | None] = []

    def start(self, requests: Sequence[GenerationRequest], sessions: Sessions) -> None:
        super().start(requests, sessions)
        # The first (prompt) call proposes nothing and brings the state.
        self._hidden = [None] * len(requests)

    def observe_row(self, outcome: Outcome) -> None:
        if outcome.hidden is not None:
            self._hidden[outcome.row] = outcome.hidden[outcome.accepted]

    def propose_row(self, slot: Slot) -> Draft:
        hidden, self._hidden[slot.row] = self._hidden[slot.row], None
        limit = min(self.k, slot.budget)
        if hidden is None or limit <= 0:
            return Proposal(tokens=[])
        weight = next(self.heads.parameters())
        with torch.inference_mode():
            logits = self.heads.draft_logits(hidden.to(weight.device, weight.dtype))[:limit]
        self.calls[slot.row] += 1
        return Proposal(tokens=logits[:, : self.vocab_size].argmax(-1).tolist())


class MedusaTreeProposer(TreeProposer):
    """Medusa's candidate tree: head ``i``'s ``top_k`` tokens at depth ``i + 1`` under every
    kept node of depth ``i``, the ``budget`` paths of highest product of head probabilities
    kept (a child never outscores its parent, so they form a tree). The target walks it with
    its own samples: exact. One sequence at a time: it reads the target's state through a
    hook on the final norm."""

    batchable = False

    def __init__(self, heads: MedusaHeads, k: int, top_k: int, budget: int, vocab: int) -> None:
        super().__init__()
        self.heads = heads
        self.max_depth = k
        self.top_k = top_k
        self.budget = budget
        self.vocab_size = vocab
        self.capture: StateCapture | None = None
        self._hidden: torch.Tensor | None = None

    def start(self, requests: Sequence[GenerationRequest], sessions: Sessions) -> None:
        super().start(requests, sessions)
        self._hidden = None

    def observe_row(self, outcome: Outcome) -> None:
        rows = None if self.capture is None else self.capture.take()
        if rows is None:
            self._hidden = None
            return
        chain = rows.shape[0] - len(outcome.draft.tokens)
        path = outcome.path
        # The state whose logits gave ``token``: the last kept node's, else the chain's last.
        self._hidden = rows[chain + path[-1]] if path else rows[chain - 1]

    def grow(self, row: int, sequence: list[int], max_depth: int) -> TokenTree:
        tree = TokenTree()
        hidden, self._hidden = self._hidden, None
        depth_limit = min(max_depth, self.max_depth)
        if hidden is None or depth_limit <= 0:
            return tree
        weight = next(self.heads.parameters())
        with torch.inference_mode():
            logits = self.heads.draft_logits(hidden.to(weight.device, weight.dtype))
            log_probs = torch.log_softmax(logits[:depth_limit, : self.vocab_size].float(), -1)
            top = torch.topk(log_probs, min(self.top_k, log_probs.shape[-1]), dim=-1)
        self.calls[row] += 1
        values, tokens = top.values.tolist(), top.indices.tolist()
        # Each level expands its best ``budget`` candidates.
        pool: list[Candidate] = []
        level = [-1]
        for depth in range(depth_limit):
            added = []
            for parent in level:
                base = 0.0 if parent == -1 else pool[parent].score
                for value, token in zip(values[depth], tokens[depth], strict=True):
                    pool.append(Candidate(base + value, depth + 1, parent, token))
                    added.append(len(pool) - 1)
            level = sorted(added, key=lambda i: -pool[i].score)[: self.budget]
        best_subtree(tree, pool, self.budget)
        tree.rounds = depth_limit
        return tree


M = TypeVar("M", bound="MedusaParams", default="MedusaParams")


class MedusaMethod(TrainedHeadsMethod[M]):
    """Medusa-1 heads drafting a chain for the shared exact verifier."""

    name = "medusa"
    description = "Medusa heads on the target's hidden state draft a chain or a tree (exact)."
    needs = frozenset({ModelRole.TARGET})
    Params = MedusaParams
    accept_length_model = "chain_analytic"
    in_all = False
    not_in_all_reason = "needs trained heads: set params.heads to a Medusa folder or hub id"
    kind = "medusa"

    def __init__(self, params: M, models: MethodModels) -> None:
        self.drafter: MedusaDrafter | None = None
        super().__init__(params, models)

    def given(self) -> str | None:
        return self.params.heads

    def load(self, source: str) -> MedusaHeads:
        return load_medusa(source)

    def training(self) -> MedusaTraining:
        return self.params.training()

    def trainer(self) -> Trainer:
        return train_medusa

    def describe(self, folder: Path, meta: dict[str, Any]) -> str:
        accuracy = ", ".join("-" if a is None else f"{a:.2f}" for a in meta["holdout_top1"])
        return f"Medusa heads {folder.name} (holdout top-1 per head: {accuracy})"

    def use(self, heads: MedusaHeads, source: str) -> None:
        params = self.params
        target, states = self.models.target, self.states
        shape = states.architecture()
        check_fits(heads, shape.hidden_size, shape.vocab_size, source)
        # The target's dtype halves the bytes a bf16 target's heads read per step; drafts
        # are deterministic, so the dtype changes which tokens are proposed, never exactness.
        heads.to(target.device, states.weights_dtype)
        k = min(params.k or heads.config.num_heads, heads.config.num_heads)
        self.drafter = MedusaDrafter(heads, k, target.vocab_size)
        self.proposer = self.drafter
        if params.tree:
            self.proposer = MedusaTreeProposer(
                heads, k, params.top_k, params.budget, target.vocab_size
            )
        self.verifier = self.chain_verifier()

    def decode(self, requests: list[GenerationRequest]) -> list[GenerationResult]:
        if self.drafter is None:
            raise SpecbenchError("medusa was used before prepare()", "call prepare(context)")
        proposer = self.proposer
        if not isinstance(proposer, MedusaTreeProposer):
            return super().decode(requests)
        with self.states.capture_final_states() as capture:
            proposer.capture = capture
            try:
                return super().decode(requests)
            finally:
                proposer.capture = None

    def chain_verifier(self) -> Verifier:
        """How chains are verified: exactly (the lossy variant overrides it)."""
        return RejectionVerifier()


class MedusaTypicalParams(MedusaParams):
    epsilon: float = Field(0.09, gt=0, le=1, description="Hard acceptance threshold.")
    delta: float = Field(0.3, gt=0, le=1, description="Entropy-scaled threshold factor.")

    @model_validator(mode="after")
    def _chains_only(self) -> MedusaTypicalParams:
        if self.tree:
            raise ValueError(
                "medusa-typical verifies chains only (typical acceptance has no tree form "
                "here): set tree = false, or use method medusa for trees"
            )
        return self


class MedusaTypicalMethod(MedusaMethod[MedusaTypicalParams]):
    """Medusa with its typical acceptance: more tokens per call, not the target's output."""

    name = "medusa-typical"
    description = "Medusa heads with Medusa's typical acceptance (LOSSY: not the target's output)."
    Params = MedusaTypicalParams
    exact = False
    accept_length_model = "measured_per_k"

    def chain_verifier(self) -> Verifier:
        params = self.params
        return TypicalAcceptanceVerifier(params.epsilon, params.delta)
