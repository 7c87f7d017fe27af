"""Server methods: a load level's latency percentiles, throughput and speculative counters,
from its sample records (``SampleRecord.serving``).

Conventions (as ``vllm bench serve``): TTFT is the time to the first chunk that carried
output; ITL the gaps between output chunks; TPOT a request's (E2E - TTFT) / (tokens - 1);
throughput the level's output tokens over its wall time (first send to last answer).
Per-position acceptance is given both ways and labelled: *marginal* (accepted at i /
drafts, vLLM's and llama.cpp's convention, acceptance length = 1 + their sum) and
*conditional* (accepted at i / accepted at i - 1).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from specbench.decoding.types import SpecCounters
from specbench.presets.schema import level_label
from specbench.records import RequestTiming, SampleRecord, ServingSummary, SummaryRecord

PERCENTILES = (50, 90, 99)


def percentiles_ms(values: Sequence[float]) -> dict[str, float]:
    """p50, p90, p99 and the mean of ``values`` (seconds), in milliseconds."""
    if not values:
        return {}
    array = np.asarray(values, dtype=float) * 1000.0
    out = {f"p{p}": float(np.percentile(array, p)) for p in PERCENTILES}
    out["mean"] = float(array.mean())
    return out


def serving_summary(group: Sequence[SampleRecord], failed: int = 0) -> ServingSummary | None:
    """The serving summary of one method label's finished samples (``None`` if it does not
    serve); ``failed`` samples are counted, never timed."""
    served = [s for s in group if s.serving is not None]
    if not served:
        return None
    first = served[0].serving
    assert first is not None
    requests: list[RequestTiming] = [
        r for s in served if s.serving is not None for r in s.serving.requests if r.error is None
    ]
    levels: dict[str, SampleRecord] = {}
    for index, sample in enumerate(served):
        levels.setdefault(sample.batch_id or f"single-{index}", sample)
    wall = sum(s.serving.level_wall_s for s in levels.values() if s.serving is not None)
    tokens = sum(r.output_tokens for r in requests)
    summary = ServingSummary(
        concurrency=first.concurrency,
        request_rate=first.request_rate,
        requests=len(requests),
        failed_requests=failed,
        output_tokens=tokens,
        wall_s=wall,
        output_tokens_per_s=tokens / wall if wall > 0 else 0.0,
        requests_per_s=len(requests) / wall if wall > 0 else 0.0,
        ttft_ms=percentiles_ms([r.ttft_s for r in requests if r.ttft_s is not None]),
        tpot_ms=percentiles_ms([r.tpot_s for r in requests if r.tpot_s is not None]),
        itl_ms=percentiles_ms([gap for r in requests for gap in r.itl_s]),
        e2e_ms=percentiles_ms([r.e2e_s for r in requests]),
        token_count_mismatches=sum(
            1
            for r in requests
            if r.output_ids == "server"
            and r.usage_tokens is not None
            and r.usage_tokens != r.stream_tokens
        ),
    )
    counters = [s.serving.counters for s in levels.values() if s.serving and s.serving.counters]
    if counters:
        _add_counters(summary, counters)
    return summary


def _add_counters(summary: ServingSummary, counters: Sequence[dict[str, Any]]) -> None:
    total = functools.reduce(SpecCounters.plus, (SpecCounters(**c) for c in counters))
    summary.drafts, summary.draft_tokens = total.drafts, total.draft_tokens
    summary.accepted = total.accepted
    if total.drafts:
        if total.draft_tokens:
            summary.acceptance_rate = total.accepted / total.draft_tokens
        summary.acceptance_length = 1.0 + total.accepted / total.drafts
        per_position = total.accepted_per_position
        summary.position_marginal = [count / total.drafts for count in per_position]
        reached = [total.drafts, *per_position[:-1]]
        summary.position_conditional = [
            count / before if before else None
            for count, before in zip(per_position, reached, strict=True)
        ]


@dataclass
class LoadCurve:
    """One server configuration over its load levels (summaries ordered by level), with the
    level at which speculation stops paying: the first whose output throughput is no
    better than its plain reference's at the same level (``None``: it pays at every level,
    or there is no reference)."""

    name: str
    points: list[SummaryRecord]
    #: Output throughput over the reference's at the same level, per point.
    gains: list[float | None]
    stops_paying: int | None = None

    def verdict(self) -> str:
        """One phrase: where speculation pays against the plain server ('' without one)."""
        known = [(s, g) for s, g in zip(self.points, self.gains, strict=True) if g is not None]
        if not known:
            return ""
        paying = [_level(s) for s, gain in known if gain > 1.0]
        if not paying:
            best_summary, best = max(known, key=lambda item: item[1])
            return (
                f"{self.name} does not pay at any level (best {best:.2f}x at "
                f"c={_level(best_summary)})"
            )
        if self.stops_paying is None:
            return f"{self.name} pays at every level"
        before = [level for level in paying if level < self.stops_paying]
        if not before:
            return f"{self.name} does not pay from c={self.stops_paying} on"
        return f"{self.name} pays up to c={max(before)}, not from c={self.stops_paying}"


def load_curves(summaries: Sequence[SummaryRecord]) -> list[LoadCurve]:
    """The serving summaries of a file as one curve per configuration."""
    served = [s for s in summaries if s.serving is not None]
    by_label = {s.method: s for s in served}
    curves: dict[str, list[SummaryRecord]] = {}
    for summary in served:
        # One curve per configuration: the label without its level (a --sweep of
        # request_rate keeps one curve per rate).
        name = summary.method.replace(level_label("", _level(summary)), "", 1)
        curves.setdefault(name, []).append(summary)
    out = []
    for name, points in curves.items():
        ordered = sorted(points, key=lambda s: (_level(s), s.method))
        gains = [_gain(s, by_label) for s in ordered]
        curve = LoadCurve(name, ordered, gains)
        for summary, gain in zip(ordered, gains, strict=True):
            if gain is not None and gain <= 1.0:
                curve.stops_paying = _level(summary)
                break
        out.append(curve)
    return out


def _level(summary: SummaryRecord) -> int:
    return summary.serving.concurrency if summary.serving is not None else 0


def _gain(summary: SummaryRecord, by_label: dict[str, SummaryRecord]) -> float | None:
    reference = by_label.get(summary.reference or "")
    if reference is None or reference is summary or summary.serving is None:
        return None
    assert reference.serving is not None
    base = reference.serving.output_tokens_per_s
    return summary.serving.output_tokens_per_s / base if base else None
