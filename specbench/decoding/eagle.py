"""Drafting with an EAGLE-3 head: chains for the shared verifier, EAGLE-2 trees for the tree path.

The head keeps its own key/value cache over the committed sequence. Position ``t`` of that
cache pairs the target's features at ``t`` with the token at ``t + 1``; after each verification
the committed positions' features (recorded during that call by the target's
:meth:`~specbench.models.capabilities.InternalStates.capture_layer_inputs`) extend it, and the
last pair's output gives the first draft token. Further drafts feed the head's own output state
back, on cache entries that are dropped again once the proposal is made.

Chains: ``k`` tokens, each the head's argmax or, when sampling, a sample whose distribution
``q`` (the same logits processing as the target's) is reported to the verifier, so the
output is exactly the target's. Trees (EAGLE-2, Li et al., 2024): each level expands the
``top_k`` nodes of highest cumulative draft log-probability into ``top_k`` children each;
after ``depth`` levels the ``budget`` best nodes are kept (a child never outranks its
parent, so the kept set is a tree) and the target walks it with its own samples (exact).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from specbench.decoding.proposers import Draft, Outcome, Proposal, RowProposer, Sessions, Slot
from specbench.decoding.sampling import SamplingParams, logits_to_probs, sample
from specbench.decoding.tree import Candidate, TokenTree, TreeProposer, best_subtree
from specbench.decoding.types import GenerationRequest
from specbench.heads.eagle3 import Eagle3Head, KVCache
from specbench.models.capabilities import InternalStates, StateCapture


class HeadState:
    """One generation as the head sees it: its cache of committed pairs and the features
    of the latest target call not yet absorbed."""

    def __init__(self, head: Eagle3Head, target: InternalStates, vocab_size: int) -> None:
        self.head = head
        self.target = target
        self.vocab_size = vocab_size
        self.capture: StateCapture | None = None
        weight = head.lm_head.weight
        self.device, self.dtype = weight.device, weight.dtype
        ids = torch.arange(head.config.draft_vocab_size, device=self.device)
        self.draft_to_target = head.target_ids(ids)
        self.cache = KVCache()
        self.pairs = 0  # positions 0 .. pairs - 1 are in the cache
        self.rows: torch.Tensor | None = None
        self.seen_target = False
        self._last: torch.Tensor | None = None
        self.recomputes = 0
        self.calls = 0

    def start(self) -> None:
        self.cache = KVCache()
        self.pairs = 0
        self.rows = None
        self.seen_target = False
        self._last = None
        self.calls = 0

    def hear(self, rows: torch.Tensor | None) -> None:
        """Features of the committed positions of the latest target call, in order."""
        self.rows = rows
        self.seen_target = self.seen_target or rows is not None

    def take_rows(self) -> torch.Tensor | None:
        if self.capture is None:
            raise RuntimeError("the EAGLE-3 head drafted outside its target's feature capture")
        return self.capture.take()

    def embed(self, tokens: Sequence[int]) -> torch.Tensor:
        ids = torch.tensor(list(tokens), dtype=torch.long, device=self.device)
        table: torch.nn.Module | None = self.head.embed_tokens
        if table is None:
            table = self.target.input_embeddings()
        out: torch.Tensor = table(ids)
        return out.to(self.dtype)

    def forward(
        self,
        tokens: Sequence[int],
        hidden: torch.Tensor,
        first_position: int | Sequence[int],
        allowed: torch.Tensor | None = None,
    ) -> torch.Tensor:
        if isinstance(first_position, int):
            positions = torch.arange(first_position, first_position + len(tokens))
        else:
            positions = torch.tensor(list(first_position))
        self.calls += 1
        out: torch.Tensor = self.head(
            self.embed(tokens),
            hidden.to(self.dtype),
            positions.to(self.device),
            self.cache,
            allowed,
        )
        return out

    def absorb(self, sequence: Sequence[int]) -> torch.Tensor | None:
        """Add the pairs of newly committed positions; the head's state at the last one
        (``len(sequence) - 2``), whose logits give the first draft. ``None`` before the
        target has processed the prompt."""
        self.cache.crop(self.pairs)
        n = len(sequence)
        need = n - 1 - self.pairs
        rows, self.rows = self.rows, None
        if need <= 0:
            return self._last
        if rows is None or rows.shape[0] < need:
            if not self.seen_target:
                return None  # before the prefill: nothing to draft from
            # The target skipped positions (a reused prompt cache): read them once more.
            rows = self._recompute(sequence)
        with torch.inference_mode():
            features = self.head.combine(rows[rows.shape[0] - need :].to(self.device))
            out = self.forward(sequence[self.pairs + 1 : n], features, self.pairs)
        self.pairs = n - 1
        self._last = out[-1]
        return self._last

    def _recompute(self, sequence: Sequence[int]) -> torch.Tensor:
        self.recomputes += 1
        ids = torch.tensor([list(sequence[:-1])], device=self.device)
        self.target.forward_uncached(ids)
        rows = self.take_rows()
        assert rows is not None
        return rows

    def choose(
        self, logits: torch.Tensor, sampling: SamplingParams | None, generator: torch.Generator
    ) -> tuple[int, torch.Tensor | None]:
        """A draft token (target id) from draft-vocabulary logits, and ``q`` over the
        target's vocabulary when it was sampled (``None``: argmax, a point mass)."""
        if sampling is None or sampling.greedy:
            return int(self.draft_to_target[int(logits.argmax())]), None
        probs = logits_to_probs(logits, sampling)
        draft = int(sample(probs, generator))
        q = torch.zeros(self.vocab_size, device=probs.device)
        q.index_add_(0, self.draft_to_target.to(probs.device), probs)
        return int(self.draft_to_target[draft]), q


class Eagle3Drafter(RowProposer):
    """Chains of ``k`` drafts from the head (see the module docstring). One sequence at a
    time: the head reads the target's features through hooks on its layers."""

    batchable = False

    def __init__(self, state: HeadState, k: int, sample_drafts: bool = True) -> None:
        super().__init__()
        self.state = state
        self.k = k
        self.max_chain = k
        self.sample_drafts = sample_drafts
        self._rejected = 0
        self._sampling: SamplingParams | None = None
        self._generator: torch.Generator | None = None

    def start(self, requests: Sequence[GenerationRequest], sessions: Sessions) -> None:
        super().start(requests, sessions)
        self.state.start()
        self._rejected = 0
        self._sampling = requests[0].sampling if self.sample_drafts else None
        self._generator = requests[0].generator(self.state.device, stream=1)

    def observe_row(self, outcome: Outcome) -> None:
        self._rejected = outcome.proposed - outcome.accepted

    def propose_row(self, slot: Slot) -> Draft:
        sequence, max_tokens = slot.sequence, slot.budget
        state = self.state
        rows = state.take_rows()
        if rows is not None and self._rejected:
            rows = rows[: rows.shape[0] - self._rejected]  # rejected drafts' positions
        self._rejected = 0
        state.hear(rows)
        hidden = state.absorb(sequence)
        limit = min(self.k, max_tokens)
        if hidden is None or limit <= 0:
            self.calls[0] = state.calls
            return Proposal(tokens=[])
        assert self._generator is not None
        tokens: list[int] = []
        probs: list[torch.Tensor] = []
        position = len(sequence) - 1
        with torch.inference_mode():
            for i in range(limit):
                logits = state.head.draft_logits(hidden).float()
                token, q = state.choose(logits, self._sampling, self._generator)
                tokens.append(token)
                if q is not None:
                    probs.append(q)
                if i + 1 < limit:
                    hidden = state.forward([token], hidden.unsqueeze(0), position + i)[-1]
        state.cache.crop(state.pairs)
        self.calls[0] = state.calls
        return Proposal(tokens=tokens, probs=torch.stack(probs) if probs else None)


@dataclass
class _Candidate(Candidate):
    source: int = 0  # row of ``sources`` holding the state it is fed with
    slot: int = -1  # its cache slot once expanded


class Eagle3TreeProposer(TreeProposer):
    """EAGLE-2 dynamic trees from the head (see the module docstring); one sequence at a
    time, like the chains."""

    batchable = False

    def __init__(self, state: HeadState, top_k: int, depth: int, budget: int) -> None:
        super().__init__()
        self.state = state
        self.top_k = top_k
        self.max_depth = depth
        self.budget = budget

    def start(self, requests: Sequence[GenerationRequest], sessions: Sessions) -> None:
        super().start(requests, sessions)
        self.state.start()

    def observe_row(self, outcome: Outcome) -> None:
        rows = self.state.take_rows()
        if rows is not None:
            chain = rows.shape[0] - len(outcome.draft.tokens)
            keep = list(range(chain)) + [chain + node for node in outcome.path]
            rows = rows[keep]
        self.state.hear(rows)

    def grow(self, row: int, sequence: list[int], max_depth: int) -> TokenTree:
        state = self.state
        tree = TokenTree()
        root = state.absorb(sequence)
        self.calls[0] = state.calls
        if root is None or max_depth <= 0 or self.budget <= 0:
            return tree
        committed = state.pairs
        sources = [root]
        pool: list[_Candidate] = []
        with torch.inference_mode():
            level = self._children(pool, state.head.draft_logits(root[None]).float(), [-1], [0.0])
            for depth in range(1, min(max_depth, self.max_depth)):
                chosen = sorted(level, key=lambda i: -pool[i].score)[: self.top_k]
                allowed = self._mask(pool, chosen, committed)
                tokens = [pool[i].token for i in chosen]
                hidden = torch.stack([sources[pool[i].source] for i in chosen])
                out = state.forward(tokens, hidden, [committed + depth - 1] * len(chosen), allowed)
                first_slot = len(state.cache) - len(chosen)
                for offset, i in enumerate(chosen):
                    pool[i].slot = first_slot + offset
                base = len(sources)
                sources.extend(out)
                level = self._children(
                    pool,
                    state.head.draft_logits(out).float(),
                    chosen,
                    [pool[i].score for i in chosen],
                    first_source=base,
                )
                tree.rounds += 1
        state.cache.crop(committed)
        self.calls[0] = state.calls
        best_subtree(tree, pool, self.budget)
        return tree

    def _children(
        self,
        pool: list[_Candidate],
        logits: torch.Tensor,
        parents: list[int],
        scores: list[float],
        first_source: int = 0,
    ) -> list[int]:
        """Add the ``top_k`` children of each parent (one row of logits each) to ``pool``."""
        log_probs = torch.log_softmax(logits, dim=-1)
        top = torch.topk(log_probs, min(self.top_k, log_probs.shape[-1]), dim=-1)
        targets = self.state.draft_to_target[top.indices].tolist()
        added = []
        for row, (parent, score) in enumerate(zip(parents, scores, strict=True)):
            depth = 1 if parent == -1 else pool[parent].depth + 1
            for value, token in zip(top.values[row].tolist(), targets[row], strict=True):
                pool.append(_Candidate(score + value, depth, parent, token, first_source + row))
                added.append(len(pool) - 1)
        return added

    def _mask(self, pool: list[_Candidate], chosen: list[int], committed: int) -> torch.Tensor:
        """Query ``i`` reads the committed pairs, its expanded ancestors and itself."""
        before = len(self.state.cache)
        allowed = torch.zeros(len(chosen), before + len(chosen), dtype=torch.bool)
        allowed[:, :committed] = True
        for row, i in enumerate(chosen):
            allowed[row, before + row] = True
            parent = pool[i].parent
            while parent != -1:
                allowed[row, pool[parent].slot] = True
                parent = pool[parent].parent
        return allowed.to(self.state.device)
