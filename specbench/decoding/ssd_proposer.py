"""The SSD proposer: the execution core's side of speculative speculative decoding.

The core asks :class:`SpeculationCacheProposer` for a round's drafts; it sends the draft
side the outcome key of the last round and returns the drafts with the distributions of
the cache entry that served them (or of the just-in-time drafting), which the shared
verifier checks. Where the draft side runs is a :class:`DraftSide`: in this process
(:class:`InlineDraftSide`, speculation on the critical path; also the counterfactual
mode) or in a worker process (:class:`specbench.decoding.draft_worker.WorkerDraftSide`,
speculation overlapping the target's verification).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from specbench.decoding.proposers import Draft, Outcome, Proposal, Proposer, Sessions, Slot
from specbench.decoding.ssd import (
    DraftReply,
    DraftSideStats,
    OutcomeKey,
    SpeculationDrafter,
    covered,
    hit_rate_at,
    schedule_name,
)
from specbench.decoding.types import GenerationRequest, GenerationResult
from specbench.models import ledger


class DraftSide(Protocol):
    """Where the SSD draft side runs; one generation at a time."""

    #: Whether speculation runs concurrently with the target (its time is then overlapped
    #: work, not part of the decoding process's phases).
    concurrent: bool

    def start(self, request: GenerationRequest) -> None:
        """Begin a generation."""
        ...

    def answer(self, sequence: Sequence[int], key: OutcomeKey | None, budget: int) -> DraftReply:
        """The round's drafts; speculation on the round's outcome follows (inline: before
        this returns; in a worker: while the target verifies)."""
        ...

    def end(self) -> DraftSideStats:
        """End the generation and return what the draft side did."""
        ...

    def close(self) -> None:
        """Release the draft side (stop a worker)."""
        ...


class InlineDraftSide:
    """The draft side in the decoding process: answer, then speculate, sequentially."""

    concurrent = False

    def __init__(self, drafter: SpeculationDrafter) -> None:
        self.drafter = drafter

    def start(self, request: GenerationRequest) -> None:
        self.drafter.start(request)

    def answer(self, sequence: Sequence[int], key: OutcomeKey | None, budget: int) -> DraftReply:
        reply = self.drafter.answer(sequence, key, budget)
        self.drafter.speculate()
        return reply

    def end(self) -> DraftSideStats:
        return self.drafter.stats

    def close(self) -> None:
        self.drafter.close()


@dataclass(frozen=True)
class _Round:
    """One round as the decoding process saw it."""

    hit: bool
    wait_s: float  # the target's wait for the drafts
    answer_s: float  # the draft side's time answering
    tokens: int  # accepted drafts plus the target's token


class SpeculationCacheProposer(Proposer):
    """Drafts of a :class:`DraftSide`, one sequence at a time (see the module docstring).

    Records add ``ssd_hit_rate`` (rounds served from the cache, the first round excluded),
    tokens per round on hits and on misses, the accepted-count histogram on hits, the
    target's wait for drafts, the draft side's busy and idle time and forwards per round,
    and, for each fan-out in ``counterfactual``, the hit rate that fan-out would have had
    and the tokens per round it would have given with the ``none`` miss policy (with
    ``jit`` a round yields what it yields now, whatever the fan-out).
    """

    batchable = False

    def __init__(
        self,
        side: DraftSide,
        k: int,
        counterfactual: Sequence[int | Sequence[int]] = (),
        caches: bool = True,
    ) -> None:
        super().__init__()
        #: Whether the draft side serves rounds from its cache (not in counterfactual mode).
        self.caches = caches
        self.side = side
        self.k = k
        self.max_chain = k
        #: Fan-out schedules (k + 1 widths) to score; an int F stands for F everywhere.
        self.counterfactual = [
            (entry,) * (k + 1) if isinstance(entry, int) else tuple(entry)
            for entry in counterfactual
        ]
        self._key: OutcomeKey | None = None
        self._reply: tuple[bool, float, float] = (False, 0.0, 0.0)  # hit, wait, answer time
        self._rounds: list[_Round] = []

    def start(self, requests: Sequence[GenerationRequest], sessions: Sessions) -> None:
        if len(requests) != 1:
            raise ValueError("SSD decodes one sequence at a time")
        super().start(requests, sessions)
        self.side.start(requests[0])
        self._key = None
        self._rounds = []

    def propose(self, slots: Sequence[Slot]) -> list[Draft]:
        (slot,) = slots
        started = time.perf_counter()
        reply = self.side.answer(slot.sequence, self._key, slot.budget)
        self._reply = (reply.hit, time.perf_counter() - started, reply.answer_s)
        return [Proposal(tokens=reply.tokens, probs=reply.probs)]

    def observe(self, outcomes: Sequence[Outcome]) -> None:
        (outcome,) = outcomes
        self._key = (outcome.accepted, outcome.token)
        self._rounds.append(_Round(*self._reply, tokens=outcome.accepted + 1))

    def finish(self, results: Sequence[GenerationResult]) -> None:
        (result,) = results
        side = self.side.end()
        result.stats.draft_calls = side.forwards
        result.stats.extra.update(self._numbers(side))
        if self.side.concurrent:
            # Speculation the target did not wait for ran beside it: overlapped work.
            late = sum(max(0.0, r.wait_s - r.answer_s) for r in self._rounds)
            ledger.overlapped(max(0.0, side.speculate_s - late), side.forwards)

    def _numbers(self, side: DraftSideStats) -> dict[str, float]:
        rounds = max(1, len(self._rounds))
        numbers = {
            "ssd_draft_wait_ms": 1000 * sum(r.wait_s for r in self._rounds) / rounds,
            "ssd_draft_busy_ms": 1000 * (side.answer_s + side.speculate_s) / rounds,
            "ssd_draft_idle_ms": 1000 * side.idle_s / rounds,
            "ssd_draft_forwards_per_round": side.forwards / rounds,
            "ssd_branches_per_round": side.branches / rounds,
        }
        predicted = side.answers - 1  # the first round has no prediction
        if predicted > 0 and self.caches:
            numbers["ssd_hit_rate"] = side.hits / predicted
        for hit, name in ((True, "hit"), (False, "miss")):
            tokens = [r.tokens for r in self._rounds if r.hit == hit]
            if tokens:
                numbers[f"ssd_tokens_per_round_{name}"] = sum(tokens) / len(tokens)
        on_hit = [min(r.tokens - 1, self.k) for r in self._rounds if r.hit]
        if on_hit:
            for accepted in range(self.k + 1):
                numbers[f"ssd_hit_accepted_{accepted}"] = on_hit.count(accepted) / len(on_hit)
        # ranks[i] ranks the outcome that round i + 1 was answered for.
        served = [r.tokens for r in self._rounds[1 : 1 + len(side.ranks)]]
        for schedule in self.counterfactual:
            name = schedule_name(schedule)
            rate = hit_rate_at(side.ranks, schedule)
            if rate is not None:
                numbers[f"ssd_cf_hit_rate_f{name}"] = rate
            if served:
                # With miss_policy "none" a missed round yields the target's one token.
                pairs = zip(side.ranks, served, strict=False)
                kept = [t if covered(entry, schedule) else 1 for entry, t in pairs]
                numbers[f"ssd_cf_tokens_per_round_none_f{name}"] = sum(kept) / len(kept)
        return numbers
