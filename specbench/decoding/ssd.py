"""Speculative speculative decoding (SSD, Kumar, Dao and May, 2026): the draft side.

While the target verifies round ``t``, the draft guesses the verification outcome
``(accepted, next token)`` and drafts round ``t + 1`` for the likeliest ones, so that on a
hit the next round starts with its drafts ready. :class:`SpeculationDrafter` is that draft
side, independent of where it runs (in the decoding process, or in a worker process:
:mod:`specbench.decoding.draft_worker`). Each round it

1. *answers* the outcome key of the last round with ``k`` drafts and the distributions
   they were drawn from: from its speculation cache on a hit, else, with the ``jit`` miss
   policy, by drafting ``k`` tokens now (the target waits), or with ``none`` by drafting
   nothing (the target decodes one token);
2. *speculates*: one forward over ``[recovery, d_1 .. d_k]`` (the *glue*) gives ``k + 1``
   distributions; row ``j`` is where the next recovery token lands if ``j`` drafts are
   accepted. It takes the top ``F_j`` tokens of row ``j`` other than ``d_{j+1}`` (that one
   would have been accepted), decodes ``k`` tokens for every branch at once (a token tree
   per step) and caches ``(j, token) -> (k tokens, their distributions)``. The cache holds
   only the current round's predictions.

Exactness: a cached continuation is a fresh draw from the draft given the prefix of its
key, made before the outcome is known; whether it is used depends only on the committed
outcome. The distributions stored with it are the ``q`` the shared verifier checks, so
the output follows the target's distribution at any temperature (greedy: token for token).

The draft side also ranks each realised outcome among the glue's candidates, so a single
run tells the hit rate of any fan-out (the counterfactual mode of the ``ssd`` method).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

import torch

from specbench.decoding.greedy import greedy_token
from specbench.decoding.sampling import SamplingParams, logits_to_probs, sample
from specbench.decoding.types import GenerationRequest
from specbench.models.base import LanguageModel, Session

MissPolicy = Literal["jit", "none"]
#: The outcome of a verification: drafts accepted and the target's next token.
OutcomeKey = tuple[int, int]


@dataclass(frozen=True)
class FanOut:
    """Branches per glue position: ``hit[j]`` after a round served from the cache,
    ``miss[j]`` after one that was not (SSD's ``--flh`` and ``--flm``)."""

    hit: tuple[int, ...]
    miss: tuple[int, ...]

    def schedule(self, after_hit: bool, positions: int) -> tuple[int, ...]:
        chosen = self.hit if after_hit else self.miss
        return tuple(chosen[:positions]) + (0,) * max(0, positions - len(chosen))


@dataclass
class Branch:
    """A cached continuation: ``tokens`` and the ``[len, V]`` distributions they were
    drawn from (``None`` at temperature 0: deterministic, one-hot)."""

    tokens: list[int]
    probs: torch.Tensor | None


@dataclass
class DraftReply:
    """The draft side's answer to one round: the drafts, their ``q``, and how they came."""

    tokens: list[int]
    probs: torch.Tensor | None
    hit: bool
    #: Draft-side seconds spent answering (a lookup on a hit, the JIT drafting on a miss).
    answer_s: float = 0.0


@dataclass
class DraftSideStats:
    """What the draft side did during one generation."""

    answers: int = 0
    hits: int = 0
    forwards: int = 0
    jit_forwards: int = 0
    branches: int = 0
    answer_s: float = 0.0
    speculate_s: float = 0.0
    idle_s: float = 0.0
    #: Per answered round after the first: the outcome's glue row (its accepted count) and
    #: the outcome token's rank among that row's candidates (0 = the top candidate; -1 when
    #: it was not a candidate at all: filtered out by top-k/top-p, or the excluded draft).
    ranks: list[tuple[int, int]] = field(default_factory=list)


class SpeculationDrafter:
    """The SSD draft side for one sequence at a time (see the module docstring).

    ``speculate_branches=False`` keeps only the glue and the ranks (the counterfactual
    mode): every round is then drafted just in time, as synchronous speculative decoding.
    """

    def __init__(
        self,
        model: LanguageModel,
        k: int,
        fan_out: FanOut,
        miss_policy: MissPolicy = "jit",
        speculate_branches: bool = True,
        saguaro: tuple[int, float] | None = None,
    ) -> None:
        self.model = model
        #: Saguaro sampling ``(top, x)``: at temperature > 0 the draft draws from its
        #: distribution with the ``top`` likeliest tokens' probabilities times ``x``.
        self.saguaro = saguaro
        self.k = k
        self.fan_out = fan_out
        self.miss_policy = miss_policy
        self.speculate_branches = speculate_branches
        self.stats = DraftSideStats()
        self._session: Session | None = None
        self._sampling = SamplingParams()
        self._generator: torch.Generator | None = None
        self._cache: dict[OutcomeKey, Branch] = {}
        self._sequence: list[int] = []
        self._drafts: list[int] = []
        self._glue: torch.Tensor | None = None
        self._last_hit = False

    def start(self, request: GenerationRequest) -> None:
        """Forget the previous sequence; draw from ``request``'s draft-side random stream."""
        if self._session is not None:
            self._session.close()
        self._session = self.model.new_session()
        self._sampling = request.sampling
        self._generator = request.generator(self.model.device, stream=1)
        self._cache = {}
        self._glue = None
        self._drafts = []
        self._last_hit = False
        self.stats = DraftSideStats()

    def answer(self, sequence: Sequence[int], key: OutcomeKey | None, budget: int) -> DraftReply:
        """Drafts for the round after ``key`` (``None``: the first round), at most ``budget``."""
        started = time.perf_counter()
        if key is not None and self._glue is not None:
            self.stats.ranks.append((key[0], self._rank(key)))
        branch = self._lookup(key) if self._continues(sequence, key) else None
        limit = max(0, min(self.k, budget))
        if branch is not None:
            hit = True
            tokens, probs = branch.tokens[:limit], branch.probs
            probs = None if probs is None else probs[:limit]
        elif self.miss_policy == "jit" or key is None:
            hit = False
            tokens, probs = self._draft_now(sequence, limit)
        else:
            hit = False
            tokens, probs = [], None
        self._sequence = list(sequence)
        self._drafts = list(tokens)
        self._last_hit = hit
        self._cache = {}
        self._glue = None
        elapsed = time.perf_counter() - started
        self.stats.answers += 1
        self.stats.hits += hit
        self.stats.answer_s += elapsed
        return DraftReply(tokens, probs, hit, elapsed)

    def speculate(self) -> None:
        """Predict the outcomes of the round just answered and draft for the likeliest."""
        started = time.perf_counter()
        session = self._require_session()
        drafts = self._drafts
        parents = list(range(-1, len(drafts) - 1))
        self._glue = session.tree_forward(self._sequence, parents, drafts)
        self.stats.forwards += 1
        if self.speculate_branches:
            schedule = self.fan_out.schedule(self._last_hit, len(drafts) + 1)
            self._grow_branches(session, schedule)
        self.stats.speculate_s += time.perf_counter() - started

    def close(self) -> None:
        if self._session is not None:
            self._session.close()
            self._session = None

    def _lookup(self, key: OutcomeKey | None) -> Branch | None:
        """The cached continuation for ``key``, if the last speculation predicted it."""
        return None if key is None else self._cache.get(key)

    def _continues(self, sequence: Sequence[int], key: OutcomeKey | None) -> bool:
        """Whether ``sequence`` is the last round's plus ``key``'s accepted drafts and token."""
        if key is None:
            return False
        accepted, token = key
        return list(sequence) == [*self._sequence, *self._drafts[:accepted], token]

    def _require_session(self) -> Session:
        if self._session is None:
            raise RuntimeError("SpeculationDrafter used before start()")
        return self._session

    def _draft_now(
        self, sequence: Sequence[int], limit: int
    ) -> tuple[list[int], torch.Tensor | None]:
        """``limit`` tokens drafted autoregressively after ``sequence`` (the miss path)."""
        session = self._require_session()
        tokens: list[int] = []
        rows: list[torch.Tensor] = []
        current = list(sequence)
        for _ in range(limit):
            logits = session.logits_from(current, len(current) - 1)[-1]
            token, q = self._draw(logits.unsqueeze(0))
            tokens.append(token[0])
            if q is not None:
                rows.append(q[0])
            current.append(token[0])
        self.stats.forwards += limit
        self.stats.jit_forwards += limit
        return tokens, torch.stack(rows) if rows else None

    def _draw(self, logits: torch.Tensor) -> tuple[list[int], torch.Tensor | None]:
        """One token per row of ``logits`` ``[n, V]`` and the rows' distributions."""
        if self._sampling.greedy:
            return greedy_token(logits).tolist(), None
        probs = logits_to_probs(logits, self._sampling)
        if self.saguaro is not None:
            probs = saguaro_rescale(probs, *self.saguaro)
        return sample(probs, self._generator).tolist(), probs

    def _candidates(self, schedule: Sequence[int]) -> list[OutcomeKey]:
        """The top ``schedule[j]`` tokens of glue row ``j``, the drafted ``d_{j+1}`` excluded."""
        glue = self._glue
        assert glue is not None
        keys: list[OutcomeKey] = []
        for j, width in enumerate(schedule):
            if width <= 0:
                continue
            scores = self._scores(glue[j], j)
            chosen = torch.topk(scores, min(width, scores.shape[-1])).indices.tolist()
            keys.extend((j, token) for token in chosen if scores[token] > float("-inf"))
        return keys

    def _scores(self, logits: torch.Tensor, position: int) -> torch.Tensor:
        """Glue row ``position``'s ranking scores: tokens the sampling could not produce and
        the drafted token that would have been accepted are ``-inf``."""
        scores = logits.float().clone()
        if not self._sampling.greedy:
            probs = logits_to_probs(logits, self._sampling)
            scores[probs <= 0] = float("-inf")
        if position < len(self._drafts):
            scores[self._drafts[position]] = float("-inf")
        return scores

    def _rank(self, key: OutcomeKey) -> int:
        accepted, token = key
        glue = self._glue
        assert glue is not None
        if accepted >= glue.shape[0]:
            return -1
        scores = self._scores(glue[accepted], accepted)
        if scores[token] == float("-inf"):
            return -1
        return int((scores > scores[token]).sum())

    def _grow_branches(self, session: Session, schedule: Sequence[int]) -> None:
        """Decode ``k`` tokens for every candidate, one tree step per token, and cache them."""
        keys = self._candidates(schedule)
        if not keys or self.k == 0:
            return
        # Tree node i (from tree_forward) is draft d_{i+1}; a branch at glue position j
        # hangs from d_j, or from the root (the recovery token) when j = 0.
        parents = [j - 1 for j, _ in keys]
        feed = [token for _, token in keys]
        tokens: list[list[int]] = [[] for _ in keys]
        probs: list[list[torch.Tensor]] = [[] for _ in keys]
        nodes = len(self._drafts)
        for _step in range(self.k):
            logits = session.tree_extend(parents, feed)
            self.stats.forwards += 1
            drawn, q = self._draw(logits)
            for b, token in enumerate(drawn):
                tokens[b].append(token)
                if q is not None:
                    probs[b].append(q[b])
            parents = list(range(nodes, nodes + len(keys)))
            nodes += len(keys)
            feed = drawn
        for b, key in enumerate(keys):
            self._cache[key] = Branch(tokens[b], torch.stack(probs[b]) if probs[b] else None)
        self.stats.branches += len(keys)


def saguaro_rescale(probs: torch.Tensor, top: int, x: float) -> torch.Tensor:
    """Saguaro sampling (SSD's ``--x``): each row's ``top`` largest probabilities times ``x``,
    renormalised. With ``x < 1`` the draft proposes its top tokens less often, so after a
    rejection the residual ``max(0, p - q)`` sits more on them, which are the tokens the
    cache holds: a higher hit rate for a lower acceptance. The rows returned are the ``q``
    the drafts are drawn from and verified against, so decoding stays exact."""
    values, index = probs.topk(min(top, probs.shape[-1]), dim=-1)
    scaled = probs.scatter(-1, index, values * x)
    return scaled / scaled.sum(dim=-1, keepdim=True)


def hit_rate_at(ranks: Sequence[tuple[int, int]], schedule: Sequence[int]) -> float | None:
    """The share of rounds whose outcome was among the top ``schedule[j]`` candidates of its
    glue row ``j``: SSD's hit rate with that fan-out schedule (counterfactual)."""
    if not ranks:
        return None
    return sum(covered(entry, schedule) for entry in ranks) / len(ranks)


def covered(entry: tuple[int, int], schedule: Sequence[int]) -> bool:
    """Whether a ranked outcome ``(row, rank)`` is in the cache ``schedule`` would fill."""
    row, rank = entry
    return 0 <= rank < (schedule[row] if row < len(schedule) else 0)


def schedule_name(schedule: Sequence[int]) -> str:
    """``3`` for a uniform fan-out of 3, ``3-2-1-1`` for a schedule by position."""
    if len(set(schedule)) == 1:
        return str(schedule[0])
    return "-".join(str(width) for width in schedule)
