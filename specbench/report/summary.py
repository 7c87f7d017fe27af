"""Metrics: one generation's numbers, and a method's summary over its samples.

Conventions (also in the README):

* ``acceptance_rate`` = accepted / verified draft tokens: the per-token acceptance
  probability alpha of Leviathan et al. Positions after a rejection are never verified and do
  not count. ``proposal_acceptance`` = accepted / proposed counts them.
* ``avg_tokens_per_step`` = new tokens / target calls, so it counts the bonus (or correction)
  token every step yields: 1.0 for the baseline. ``accepted_per_step`` excludes it.
* ``speedup`` = the method's median tokens/s over the baseline's median tokens/s, both from
  the same results file, with a 95% paired bootstrap interval over prompts. A distributed run
  (samples from several workers) computes it per worker and averages, weighted by samples.
  ``reference_speedup`` divides by the method's own reference instead (an external engine's
  plain decoding; the run's baseline for in-process methods): the within-engine speedup.
* The acceptance profile has two per-position vectors: *conditional* (accepted at i / reached
  i, ``position_acceptance``) and *marginal* (accepted at i / steps, ``position_marginal``:
  the share of steps whose first i + 1 drafts were all kept). ``acceptance_length`` =
  1 + sum(marginal) is the per-step mean; a step that drafted nothing counts as a step with
  nothing accepted, so it equals tokens per target call up to the tokens cut at the end.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

from specbench.costs.phases import cost_levels, summarize_costs
from specbench.costs.units import UnitCosts
from specbench.decoding.types import GenerationResult
from specbench.records import SampleRecord, SummaryRecord
from specbench.report.serving import serving_summary
from specbench.report.uncertainty import (
    MachineLoad,
    by_worker,
    combined_speedup,
    noise_warnings,
    speedup_interval,
    tokens_per_sec_interval,
)


def ratio(numerator: float, denominator: float) -> float | None:
    return numerator / denominator if denominator else None


def generation_metrics(result: GenerationResult, wall_s: float) -> dict[str, Any]:
    """The metric fields of a sample record for one generation timed at ``wall_s``."""
    stats = result.stats
    new_tokens = len(result.tokens)
    verified = sum(stats.position_verified)
    return {
        "new_tokens": new_tokens,
        "stop_reason": result.stop_reason,
        "wall_s": wall_s,
        "tokens_per_sec": new_tokens / wall_s if wall_s > 0 else 0.0,
        "steps": stats.steps,
        "target_calls": stats.target_calls,
        "draft_calls": stats.draft_calls,
        "proposed": stats.proposed,
        "accepted": stats.accepted,
        "rejections": stats.rejections,
        "verified": verified,
        "acceptance_rate": ratio(stats.accepted, verified),
        "proposal_acceptance": ratio(stats.accepted, stats.proposed),
        "expected_acceptance_rate": ratio(stats.expected_accepted, stats.expected_verified),
        "avg_tokens_per_step": ratio(new_tokens, stats.target_calls) or 0.0,
        "accepted_per_step": ratio(stats.accepted, stats.steps) or 0.0,
        "target_calls_per_token": ratio(stats.target_calls, new_tokens) or 0.0,
        "position_verified": list(stats.position_verified),
        "position_accepted": list(stats.position_accepted),
        "stats": dict(stats.extra),
    }


def summarize(
    samples: Iterable[SampleRecord],
    baseline: str | None,
    run_id: str,
    load: MachineLoad | None = None,
    intervals: bool = True,
    unit_costs: UnitCosts | None = None,
) -> list[SummaryRecord]:
    """One summary per method label, in the order methods first appear.

    ``load`` (from the run header and end record) adds a warning when the machine was
    overloaded; ``intervals=False`` skips the bootstrap (live tables refresh often).
    """
    everything = list(samples)
    # Failed samples (a server's errors) are counted, never timed; one that a later session
    # ran again (--resume) is not counted either.
    finished = {(s.method, s.prompt_id, s.run) for s in everything if not s.failed}
    failed_keys = {(s.method, s.prompt_id, s.run) for s in everything if s.failed}
    failed = Counter(key[0] for key in failed_keys - finished)
    groups: dict[str, list[SampleRecord]] = defaultdict(list)
    for sample in everything:
        if not sample.failed:
            groups[sample.method].append(sample)
    medians = {label: _median_tps(group) for label, group in groups.items()}
    base = medians.get(baseline) if baseline else None
    base_group = groups.get(baseline or "", []) if base else []
    # The run's own speed, prompt by prompt, from the baseline's one-token steps: each
    # engine's level from the baseline method decoding on it (the run's baseline, and a
    # static-engine copy of it, say).
    base_name = groups[baseline][0].method_name if baseline and baseline in groups else None
    reference = [
        sample
        for label, group in groups.items()
        if label == baseline or (base_name is not None and group[0].method_name == base_name)
        for sample in group
    ]
    levels = cost_levels(reference, unit_costs) if unit_costs else {}
    summaries = []
    for label, group in groups.items():
        summary = _summarize_group(label, group, baseline if base else None, base, run_id)
        if base_group and label != baseline and len(by_worker(group)) > 1:
            # Several workers: each speedup on its own hardware, then combined.
            summary.speedup = combined_speedup(group, base_group, interval=False)[0]
        if intervals:
            _add_uncertainty(summary, group, base_group if label != baseline else [], load)
        _add_reference(summary, group, groups, medians, intervals)
        _add_costs(summary, group, unit_costs, levels)
        summary.failed = failed[label]
        summary.serving = serving_summary(group, failed[label])
        summaries.append(summary)
    return summaries


def _add_costs(
    summary: SummaryRecord,
    group: Sequence[SampleRecord],
    unit_costs: UnitCosts | None,
    levels: dict[str, float],
) -> None:
    costs = summarize_costs(group, unit_costs, levels)
    if costs is None:
        return
    summary.ms_per_token_by_phase = costs.ms_per_token
    summary.measured_ms_per_token = costs.measured_ms_per_token
    summary.predicted_ms_per_token = costs.predicted_ms_per_token
    summary.predicted_ms_by_phase = costs.predicted_by_phase
    summary.cost_gap_phase = costs.gap_phase
    summary.cost_level = costs.level


def _add_reference(
    summary: SummaryRecord,
    group: Sequence[SampleRecord],
    groups: dict[str, list[SampleRecord]],
    medians: dict[str, float],
    intervals: bool,
) -> None:
    """The speedup over the method's own reference (an engine's plain decoding)."""
    reference = group[0].reference
    summary.reference = reference
    engine = group[0].engine
    if engine:
        summary.engine = f"{engine.get('name')} {engine.get('version')}".strip()
    if reference is None or reference not in groups or not medians.get(reference):
        return
    if reference == summary.baseline:
        summary.reference_speedup = summary.speedup
        summary.reference_speedup_ci = summary.speedup_ci
        return
    summary.reference_speedup = medians[summary.method] / medians[reference]
    if intervals and reference != summary.method:
        ci = speedup_interval(group, groups[reference])
        summary.reference_speedup_ci = None if ci is None else (ci.low, ci.high)


def _add_uncertainty(
    summary: SummaryRecord,
    group: Sequence[SampleRecord],
    baseline_group: Sequence[SampleRecord],
    load: MachineLoad | None,
) -> None:
    tps_ci = tokens_per_sec_interval(group)
    speedup_ci = None
    if baseline_group and len(by_worker(group)) > 1:
        speedup_ci = combined_speedup(group, baseline_group)[1]
    elif baseline_group:
        speedup_ci = speedup_interval(group, baseline_group)
    summary.tokens_per_sec_ci = None if tps_ci is None else (tps_ci.low, tps_ci.high)
    summary.speedup_ci = None if speedup_ci is None else (speedup_ci.low, speedup_ci.high)
    speedup = summary.speedup if baseline_group else None
    summary.noise = noise_warnings(speedup, speedup_ci, summary.tokens_per_sec_median, tps_ci, load)


def _median_tps(group: Sequence[SampleRecord]) -> float:
    return float(np.median([s.tokens_per_sec for s in group]))


def _summarize_group(
    label: str,
    group: Sequence[SampleRecord],
    baseline: str | None,
    baseline_tps: float | None,
    run_id: str,
) -> SummaryRecord:
    tps = np.array([s.tokens_per_sec for s in group])
    walls = np.array([s.wall_s for s in group])
    total = {
        field: sum(getattr(s, field) for s in group)
        for field in ("new_tokens", "target_calls", "steps", "proposed", "accepted", "verified")
    }
    expected = sum((s.expected_acceptance_rate or 0.0) * s.verified for s in group)
    expected_verified = sum(s.verified for s in group if s.expected_acceptance_rate is not None)
    width = max((len(s.position_verified) for s in group), default=0)
    verified_at = [sum(_at(s.position_verified, i) for s in group) for i in range(width)]
    accepted_at = [sum(_at(s.position_accepted, i) for s in group) for i in range(width)]
    stats: dict[str, list[float]] = defaultdict(list)
    for s in group:
        for key, value in s.stats.items():
            stats[key].append(value)
    median_tps = float(np.median(tps))
    batches: dict[str, float] = {}
    for index, s in enumerate(group):
        key = s.batch_id or f"single-{index}"
        batches[key] = s.batch_wall_s if s.batch_wall_s is not None else s.wall_s
    steps = total["steps"]
    marginal = [a / steps for a in accepted_at] if steps else []
    drafted = [s for s in group if s.steps]
    compared = [s.matches_baseline for s in group if s.matches_baseline is not None]
    scores = [s.score for s in group if s.score is not None]
    return SummaryRecord(
        run_id=run_id,
        method=label,
        method_name=group[0].method_name,
        exact=group[0].exact,
        synthetic=group[0].synthetic,
        samples=len(group),
        new_tokens=total["new_tokens"],
        tokens_per_sec_median=median_tps,
        tokens_per_sec_p25=float(np.percentile(tps, 25)),
        tokens_per_sec_p75=float(np.percentile(tps, 75)),
        tokens_per_sec_min=float(tps.min()),
        tokens_per_sec_max=float(tps.max()),
        wall_s_median=float(np.median(walls)),
        wall_s_total=float(walls.sum()),
        batch_size=max(s.batch_size for s in group),
        throughput_tokens_per_sec=ratio(total["new_tokens"], sum(batches.values())) or 0.0,
        acceptance_rate=ratio(total["accepted"], total["verified"]),
        proposal_acceptance=ratio(total["accepted"], total["proposed"]),
        expected_acceptance_rate=ratio(expected, expected_verified),
        avg_tokens_per_step=ratio(total["new_tokens"], total["target_calls"]) or 0.0,
        accepted_per_step=ratio(total["accepted"], total["steps"]) or 0.0,
        target_calls_per_token=ratio(total["target_calls"], total["new_tokens"]) or 0.0,
        position_acceptance=[ratio(a, v) for a, v in zip(accepted_at, verified_at, strict=True)],
        position_marginal=marginal,
        acceptance_length=1.0 + sum(marginal) if steps else None,
        acceptance_length_request_mean=(
            float(np.mean([1.0 + s.accepted / s.steps for s in drafted])) if drafted else None
        ),
        tokens_per_step_request_mean=float(np.mean([s.avg_tokens_per_step for s in group])),
        greedy_match_rate=ratio(sum(compared), len(compared)),
        score_mean=ratio(sum(scores), len(scores)),
        scored=len(scores),
        speedup=median_tps / baseline_tps if baseline_tps else None,
        baseline=baseline,
        stats={key: float(np.mean(values)) for key, values in stats.items()},
    )


def _at(values: Sequence[int], index: int) -> int:
    return values[index] if index < len(values) else 0
