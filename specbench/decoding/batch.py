"""Batched speculative decoding: several sequences per forward call, each at its own pace.

Every step, each unfinished row drafts up to its own budget, the target scores all rows'
drafts in one call (:class:`~specbench.models.base.BatchSession` keeps per-row caches,
positions and rollback), and the shared verifier decides per row how many drafts to keep.
Rows with fewer drafts than the longest are padded with drafts that are always "accepted"
and then cut back, drawing the bonus token from the row's own last position, which keeps
every row exact. Finished rows sit out; each row's latency is the time until it finished.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections.abc import Sequence

import torch

from specbench.decoding import ledger
from specbench.decoding.drafters import Drafter, Proposal
from specbench.decoding.greedy import greedy_applies, greedy_token, greedy_verdict
from specbench.decoding.loop import DecodeState
from specbench.decoding.sampling import SamplingParams, logits_to_probs, one_hot, sample
from specbench.decoding.types import GenerationRequest, GenerationResult
from specbench.decoding.verify import RejectionVerifier, Verifier
from specbench.models.base import BatchSession, LanguageModel


class BatchDrafter(ABC):
    """Proposes drafts for the rows of a batch (``None`` rows are finished)."""

    def __init__(self) -> None:
        self.calls = 0

    def start(self, requests: Sequence[GenerationRequest]) -> None:
        self.calls = 0

    @abstractmethod
    def propose(
        self, sequences: Sequence[list[int] | None], budgets: Sequence[int]
    ) -> list[Proposal | None]:
        """Per row: up to ``budgets[b]`` tokens after ``sequences[b]``."""


class PerRowDrafter(BatchDrafter):
    """A model-free drafter (n-gram lookup, or none) applied to each row on its own."""

    def __init__(self, drafter: Drafter | None = None) -> None:
        super().__init__()
        self.drafter = drafter

    def start(self, requests: Sequence[GenerationRequest]) -> None:
        super().start(requests)
        if self.drafter is not None and requests:
            self.drafter.start(requests[0])

    def propose(
        self, sequences: Sequence[list[int] | None], budgets: Sequence[int]
    ) -> list[Proposal | None]:
        out: list[Proposal | None] = []
        for sequence, budget in zip(sequences, budgets, strict=True):
            if sequence is None:
                out.append(None)
            elif self.drafter is None or budget <= 0:
                out.append(Proposal(tokens=[]))
            else:
                out.append(self.drafter.propose(sequence, budget))
        return out


class BatchModelDrafter(BatchDrafter):
    """A draft model sampling ``k`` tokens for every row, one batched forward per token."""

    def __init__(self, model: LanguageModel, k: int) -> None:
        super().__init__()
        self.model = model
        self.k = k
        self._session: BatchSession | None = None
        self._requests: Sequence[GenerationRequest] = ()
        self._generators: list[torch.Generator] = []

    def start(self, requests: Sequence[GenerationRequest]) -> None:
        super().start(requests)
        self._requests = requests
        self._session = self.model.new_batch_session(len(requests))
        self._generators = [r.generator(self.model.device, stream=1) for r in requests]

    def propose(
        self, sequences: Sequence[list[int] | None], budgets: Sequence[int]
    ) -> list[Proposal | None]:
        if self._session is None:
            raise RuntimeError("BatchModelDrafter.propose called before start()")
        wanted = [
            0 if s is None else min(self.k, b) for s, b in zip(sequences, budgets, strict=True)
        ]
        drafts = [None if s is None else list(s) for s in sequences]
        tokens: list[list[int]] = [[] for _ in sequences]
        probs: list[list[torch.Tensor]] = [[] for _ in sequences]
        for step in range(max(wanted, default=0)):
            rows = [d if d is not None and step < wanted[b] else None for b, d in enumerate(drafts)]
            logits = self._session.logits_rows(rows, [0 if r is None else len(r) - 1 for r in rows])
            self.calls += 1
            for b, row_logits in enumerate(logits):
                if row_logits is None:
                    continue
                sampling = self._requests[b].sampling
                if greedy_applies(sampling):  # deterministic: the argmax, no distribution
                    token = int(greedy_token(row_logits[-1]))
                else:
                    q = logits_to_probs(row_logits[-1], sampling)
                    token = int(sample(q, self._generators[b]))
                    probs[b].append(q)
                tokens[b].append(token)
                drafts[b].append(token)  # type: ignore[union-attr]
        return [
            None if s is None else Proposal(tokens[b], torch.stack(probs[b]) if probs[b] else None)
            for b, s in enumerate(sequences)
        ]


def batched_generate(
    requests: Sequence[GenerationRequest],
    target: LanguageModel,
    drafter: BatchDrafter,
    verifier: Verifier | None = None,
) -> list[GenerationResult]:
    """Decode ``requests`` together; each result carries its row's ``latency_s``."""
    verifier = verifier or RejectionVerifier()
    states = [DecodeState(r) for r in requests]
    session = target.new_batch_session(len(requests))
    generator = requests[0].generator(target.device, stream=0)
    sampling = requests[0].sampling
    drafter.start(requests)
    latencies = [0.0] * len(requests)
    start = time.perf_counter()
    while True:
        active = [b for b, state in enumerate(states) if not state.done]
        if not active:
            break
        sequences = [s.sequence if not s.done else None for s in states]
        budgets = [s.draft_budget if not s.done else 0 for s in states]
        with ledger.phase("draft"):
            proposals = drafter.propose(sequences, budgets)
        logits = session.logits_rows(
            [
                None if p is None else s.sequence + p.tokens
                for s, p in zip(states, proposals, strict=True)
            ],
            [len(s.sequence) - 1 for s in states],
        )
        with ledger.phase("verify"):
            if greedy_applies(sampling, verifier):
                decisions = _greedy_decisions(active, proposals, logits)
            else:
                decisions = _sampled_decisions(
                    active, proposals, logits, target, sampling, verifier, generator
                )
        now = time.perf_counter()
        for b, (accepted, next_token, expected) in zip(active, decisions, strict=True):
            proposal = proposals[b]
            assert proposal is not None
            state = states[b]
            state.stats.target_calls += 1
            state.stats.record_step(len(proposal.tokens), accepted, expected)
            state.commit([*proposal.tokens[:accepted], next_token])
            if state.done:
                latencies[b] = now - start
    results = []
    for state, latency in zip(states, latencies, strict=True):
        result = state.result(drafter.calls)
        result.latency_s = latency
        results.append(result)
    return results


Decision = tuple[int, int, list[float] | None]


def _greedy_decisions(
    active: Sequence[int],
    proposals: Sequence[Proposal | None],
    logits: Sequence[torch.Tensor | None],
) -> list[Decision]:
    """Each active row's temperature-0 verdict by argmax comparison (see
    :mod:`specbench.decoding.greedy`): no padded one-hot tensors."""
    decisions: list[Decision] = []
    for b in active:
        proposal, row_logits = proposals[b], logits[b]
        assert proposal is not None and row_logits is not None
        drafts = torch.tensor([proposal.tokens], dtype=torch.long, device=row_logits.device)
        verdict = greedy_verdict(drafts, row_logits.unsqueeze(0))
        assert verdict.expected_accept is not None
        decisions.append(
            (
                int(verdict.accepted[0]),
                int(verdict.next_tokens[0]),
                verdict.expected_accept[0].tolist(),
            )
        )
    return decisions


def _sampled_decisions(
    active: Sequence[int],
    proposals: Sequence[Proposal | None],
    logits: Sequence[torch.Tensor | None],
    target: LanguageModel,
    sampling: SamplingParams,
    verifier: Verifier,
    generator: torch.Generator,
) -> list[Decision]:
    """The verifier's verdict for all active rows at once, drafts padded to the longest."""
    lengths = {b: len(proposals[b].tokens) for b in active}  # type: ignore[union-attr]
    widest = max(lengths.values())
    vocab = target.vocab_size
    draft_tokens = torch.zeros(len(active), widest, dtype=torch.long, device=target.device)
    pad = one_hot(torch.zeros((), dtype=torch.long), vocab).to(target.device)
    draft_probs = pad.expand(len(active), widest, vocab).clone()
    target_probs = pad.expand(len(active), widest + 1, vocab).clone()
    bonus = []
    for i, b in enumerate(active):
        proposal = proposals[b]
        assert proposal is not None
        k = lengths[b]
        row_probs = logits_to_probs(logits[b], sampling)  # type: ignore[arg-type]
        if k:
            draft_tokens[i, :k] = torch.tensor(proposal.tokens, device=target.device)
            draft_probs[i, :k] = proposal.draft_probs(vocab, target.device)
        target_probs[i, :k] = row_probs[:k]
        target_probs[i, widest] = row_probs[k]
        bonus.append(row_probs[k])
    verdict = verifier.verify(draft_tokens, draft_probs, target_probs, generator)
    decisions: list[Decision] = []
    for i, b in enumerate(active):
        k = lengths[b]
        accepted = min(int(verdict.accepted[i]), k)
        if int(verdict.accepted[i]) >= k and k < widest:
            # Padding was "accepted": the row's own bonus comes from its last position.
            next_token = int(sample(bonus[i], generator))
        else:
            next_token = int(verdict.next_tokens[i])
        expected = None
        if verdict.expected_accept is not None:
            expected = verdict.expected_accept[i, :k].tolist()
        decisions.append((accepted, next_token, expected))
    return decisions
