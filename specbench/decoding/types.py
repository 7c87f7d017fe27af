"""Plain data passed between the runner, methods, drafters and verifiers."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

import torch

from specbench.decoding.sampling import SamplingParams

#: ``error``: a request that failed (a server that answered an error or stopped answering).
StopReason = Literal["eos", "length", "error"]


@dataclass(frozen=True)
class GenerationRequest:
    """One generation: a tokenized prompt, how much to generate and how to sample.

    ``seed`` determines every random draw of the generation; the runner gives every method
    the same seed for the same prompt and run.
    """

    prompt_ids: list[int]
    max_new_tokens: int
    sampling: SamplingParams
    seed: int
    stop_token_ids: frozenset[int] = frozenset()
    #: The conversation the ids encode, as ``(role, content)`` pairs (system, user,
    #: assistant): for servers whose chat API takes messages instead of ids.
    messages: tuple[tuple[str, str], ...] = ()

    def generator(self, device: torch.device, stream: int = 0) -> torch.Generator:
        """A generator on ``device`` for one random stream (0: target side, 1: draft side)."""
        return torch.Generator(device=device).manual_seed(self.seed * 2 + stream)


@dataclass
class DecodeStats:
    """Counters a method fills while it decodes; the runner turns them into a record.

    A *step* is one verification: one target call that scores the drafts (and, at the same
    time, gives the next token). ``position_verified[i]`` counts how often a draft token at
    position ``i`` of a step reached the verifier (earlier positions all accepted), and
    ``position_accepted[i]`` how often it was accepted. ``expected_accepted`` sums the
    verifier's acceptance probabilities over verified positions. ``extra`` holds
    method-specific numbers (tree size, judge accept rate, ...), summarised by their mean.
    ``expected_verified`` counts the positions whose expectation the verifier reported.
    """

    steps: int = 0
    target_calls: int = 0
    draft_calls: int = 0
    proposed: int = 0
    accepted: int = 0
    rejections: int = 0
    position_verified: list[int] = field(default_factory=list)
    position_accepted: list[int] = field(default_factory=list)
    expected_accepted: float = 0.0
    expected_verified: int = 0
    extra: dict[str, float] = field(default_factory=dict)

    def record_step(
        self, proposed: int, accepted: int, expected: Sequence[float] | None = None
    ) -> None:
        """Count one verification of ``proposed`` drafts of which ``accepted`` were kept."""
        verified = min(accepted + 1, proposed)
        self.record_walk(proposed, accepted, verified)
        if expected is not None:
            self.expected_accepted += float(sum(expected[:verified]))
            self.expected_verified += verified

    def record_walk(self, proposed: int, accepted: int, verified: int) -> None:
        """Count one verification that examined ``verified`` draft positions (a chain's
        prefix, or the depths of a tree walk) and kept ``accepted`` of them."""
        self.steps += 1
        self.proposed += proposed
        self.accepted += accepted
        if accepted < verified:
            self.rejections += 1
        if len(self.position_verified) < verified:
            grow = verified - len(self.position_verified)
            self.position_verified.extend([0] * grow)
            self.position_accepted.extend([0] * grow)
        for i in range(verified):
            self.position_verified[i] += 1
        for i in range(accepted):
            self.position_accepted[i] += 1

    def merge(self, other: DecodeStats) -> None:
        """Add ``other``'s counts to these (turns of one conversation, say).

        ``extra`` values are averaged, weighted by steps, as they are per-step quantities.
        """
        steps_before = self.steps
        for name in ("steps", "target_calls", "draft_calls", "proposed", "accepted", "rejections"):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        self.expected_accepted += other.expected_accepted
        self.expected_verified += other.expected_verified
        for mine, theirs in (
            (self.position_verified, other.position_verified),
            (self.position_accepted, other.position_accepted),
        ):
            mine.extend([0] * (len(theirs) - len(mine)))
            for i, count in enumerate(theirs):
                mine[i] += count
        for key, value in other.extra.items():
            weight_before = steps_before if key in self.extra else 0
            total = weight_before + other.steps
            mine_value = self.extra.get(key, 0.0)
            self.extra[key] = (
                (mine_value * weight_before + value * other.steps) / total if total else value
            )


@dataclass
class GenerationResult:
    """The new tokens of one generation (prompt excluded), why it stopped, and its stats.

    ``latency_s`` is set by batched decoding: the time from the batch's start until this
    sequence finished. ``costs`` is set by external engines that report their own timings.
    """

    tokens: list[int]
    stop_reason: StopReason
    stats: DecodeStats
    latency_s: float | None = None
    #: Engines that time their own phases: seconds by phase (``draft``, ``target``,
    #: ``verify``), for the cost ledger; phases left out are unknown.
    costs: dict[str, float] | None = None
    #: Why the generation failed (a server's error, a timeout, a cut stream): the sample is
    #: recorded as failed, never as a fast one, and ``--resume`` runs it again.
    error: str | None = None
    #: Requests sent to a server: what the client measured (see :class:`ServedRequest`).
    served: ServedRequest | None = None


@dataclass
class SpecCounters:
    """Speculative-decoding counters of an engine (cumulative, or a change over a request).

    ``target_calls``: forward calls of the target (``None`` when the engine does not say;
    then one per drafting step plus one per plain step is assumed). ``drafts``: steps that
    verified a draft. ``accepted_per_position[i]``: drafts whose token ``i`` was accepted.
    """

    drafts: int = 0
    draft_tokens: int = 0
    accepted: int = 0
    accepted_per_position: list[int] = field(default_factory=list)
    target_calls: int | None = None

    def scaled(self, share: float) -> SpecCounters:
        """A ``share`` of these counters (rounded): one sequence's part of a change that
        several sequences made together (a batch, a server's load level)."""
        return SpecCounters(
            drafts=round(self.drafts * share),
            draft_tokens=round(self.draft_tokens * share),
            accepted=round(self.accepted * share),
            accepted_per_position=[round(v * share) for v in self.accepted_per_position],
        )

    def minus(self, before: SpecCounters) -> SpecCounters:
        """The change from ``before`` to these counters."""
        return self._combine(before, -1)

    def plus(self, other: SpecCounters) -> SpecCounters:
        """These counters and ``other`` together (two levels, two turns)."""
        return self._combine(other, 1)

    def _combine(self, other: SpecCounters, sign: int) -> SpecCounters:
        width = max(len(self.accepted_per_position), len(other.accepted_per_position))
        mine = self.accepted_per_position + [0] * (width - len(self.accepted_per_position))
        theirs = other.accepted_per_position + [0] * (width - len(other.accepted_per_position))
        calls = None
        if self.target_calls is not None and other.target_calls is not None:
            calls = self.target_calls + sign * other.target_calls
        return SpecCounters(
            drafts=self.drafts + sign * other.drafts,
            draft_tokens=self.draft_tokens + sign * other.draft_tokens,
            accepted=self.accepted + sign * other.accepted,
            accepted_per_position=[a + sign * b for a, b in zip(mine, theirs, strict=True)],
            target_calls=calls,
        )


@dataclass
class ServedRequest:
    """One request to a server as the client saw it (times in seconds from sending it).

    ``chunk_times`` are the arrival times of the stream's chunks that carried output
    (``ttft_s`` is the first); a chunk may carry several tokens (a server that streams a
    speculative step at once), so inter-token latencies are taken between chunks, as
    ``vllm bench serve`` does. ``usage_tokens`` is the server's own count (``usage``),
    ``stream_tokens`` what the stream carried. The level fields describe the load the
    request ran under and are the same for every request of that level.
    """

    sent_s: float = 0.0
    ttft_s: float | None = None
    e2e_s: float = 0.0
    chunk_times: list[float] = field(default_factory=list)
    usage_tokens: int | None = None
    stream_tokens: int = 0
    #: ``token_ids`` or ``text``: what the prompt was sent as.
    prompt_as: str = "token_ids"
    #: ``server`` (ids the server streamed) or ``retokenized`` (its text, re-encoded).
    output_ids: str = "server"
    api: str = "completions"
    concurrency: int = 1
    request_rate: float | None = None
    level_wall_s: float | None = None
    counters: SpecCounters | None = None


class InterruptedGeneration(KeyboardInterrupt):
    """Ctrl-C during a call that had already finished some of its requests (a server's load
    level): ``results`` has one result per request, the unfinished ones failed with an
    ``error``, so the runner writes what finished before it stops."""

    def __init__(self, results: list[GenerationResult]) -> None:
        super().__init__()
        self.results = results
