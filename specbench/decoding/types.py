"""Plain data passed between the runner, methods, drafters and verifiers."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

import torch

from specbench.decoding.sampling import SamplingParams

StopReason = Literal["eos", "length"]


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
