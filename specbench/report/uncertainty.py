"""Uncertainty of a run's headline numbers: bootstrap intervals and noise warnings.

Speedups are ratios of medians measured on the same prompts, so their interval is a *paired*
bootstrap over prompts: each resample draws prompts with replacement and takes, for those
prompts, every run of the method and every run of the baseline. Resampling samples one by one
would treat a hard prompt and its reruns as independent and understate the spread.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from specbench.records import RunEnd, RunHeader, SampleRecord

BOOTSTRAP_RESAMPLES = 2000
CONFIDENCE = 0.95
#: A speedup interval wider than this (half-width over the estimate) earns a warning.
NOISY_HALF_WIDTH = 0.10
#: The end-of-run load includes the run's own threads; above this many times the CPU count,
#: something else was competing for the cores.
END_LOAD_MARGIN = 1.25
_SEED = 20_240_611  # fixed: the same samples always give the same interval


@dataclass(frozen=True)
class Interval:
    low: float
    high: float

    def half_width_over(self, estimate: float) -> float:
        """Half the interval's width relative to ``estimate`` (0.1 = +-10%)."""
        return (self.high - self.low) / 2 / estimate if estimate else float("inf")


@dataclass(frozen=True)
class MachineLoad:
    """The 1-minute load average and CPU count at a run's start and end (end may be unknown)."""

    cpu_count: int
    load_start: float
    load_end: float | None = None

    @property
    def overloaded(self) -> bool:
        """Load above the CPU count at the start, or 25% above it at the end: the end figure
        includes the run itself, which keeps up to every core busy."""
        if self.load_start > self.cpu_count:
            return True
        return self.load_end is not None and self.load_end > END_LOAD_MARGIN * self.cpu_count


def current_load() -> dict[str, float | int]:
    """What run headers record: load averages (1, 5, 15 min) and the CPU count."""
    try:
        one, five, fifteen = os.getloadavg()
    except OSError:  # not every platform has it
        one = five = fifteen = float("nan")
    return {"load1": one, "load5": five, "load15": fifteen, "cpu_count": os.cpu_count() or 1}


def _per_prompt_matrix(samples: Sequence[SampleRecord], prompts: Sequence[str]) -> np.ndarray:
    """tokens/s as a ``[prompts, runs]`` matrix, NaN where a run is missing."""
    rows: dict[str, list[float]] = {p: [] for p in prompts}
    for s in samples:
        if s.prompt_id in rows:
            rows[s.prompt_id].append(s.tokens_per_sec)
    width = max((len(v) for v in rows.values()), default=1)
    matrix = np.full((len(prompts), max(width, 1)), np.nan)
    for i, prompt in enumerate(prompts):
        values = rows[prompt]
        matrix[i, : len(values)] = values
    return matrix


def _resampled_medians(matrix: np.ndarray, picks: np.ndarray) -> np.ndarray:
    """Median over every value of the picked prompts, one per resample (``picks``: [B, P])."""
    gathered = matrix[picks].reshape(picks.shape[0], -1)
    return np.asarray(np.nanmedian(gathered, axis=1))


def _percentiles(values: np.ndarray) -> Interval | None:
    values = values[np.isfinite(values)]
    if values.size == 0:
        return None
    tail = (1 - CONFIDENCE) / 2 * 100
    low, high = np.percentile(values, [tail, 100 - tail])
    return Interval(float(low), float(high))


def _picks(n: int) -> np.ndarray:
    """Resampled indices (with replacement) of ``n`` items, one row per resample."""
    rng = np.random.default_rng(_SEED)
    return rng.integers(0, n, size=(BOOTSTRAP_RESAMPLES, n))


def tokens_per_sec_interval(samples: Sequence[SampleRecord]) -> Interval | None:
    """95% bootstrap interval of the median tokens/s, resampling prompts."""
    prompts = sorted({s.prompt_id for s in samples})
    if len(prompts) < 2 and len(samples) < 2:
        return None
    if len(prompts) < 2:  # one prompt: resample its runs instead
        values = np.array([s.tokens_per_sec for s in samples])
        return _percentiles(np.median(values[_picks(len(values))], axis=1))
    matrix = _per_prompt_matrix(samples, prompts)
    return _percentiles(_resampled_medians(matrix, _picks(len(prompts))))


def speedup_interval(
    method: Sequence[SampleRecord], baseline: Sequence[SampleRecord]
) -> Interval | None:
    """95% paired bootstrap interval of median(method tok/s) / median(baseline tok/s).

    Only prompts both ran are used; each resample draws prompts with replacement and keeps
    every run of each drawn prompt, for both methods alike.
    """
    draws = _ratio_draws(method, baseline)
    return None if draws is None else _percentiles(draws)


def _ratio_draws(
    method: Sequence[SampleRecord], baseline: Sequence[SampleRecord]
) -> np.ndarray | None:
    """The paired bootstrap's speedups, one per resample; ``None`` under two shared prompts."""
    prompts = sorted({s.prompt_id for s in method} & {s.prompt_id for s in baseline})
    if len(prompts) < 2:
        return None
    picks = _picks(len(prompts))
    ours = _resampled_medians(_per_prompt_matrix(method, prompts), picks)
    theirs = _resampled_medians(_per_prompt_matrix(baseline, prompts), picks)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.asarray(ours / theirs)


def by_worker(samples: Sequence[SampleRecord]) -> dict[str | None, list[SampleRecord]]:
    groups: dict[str | None, list[SampleRecord]] = {}
    for s in samples:
        groups.setdefault(_worker_of(s), []).append(s)
    return groups


def _worker_of(sample: SampleRecord) -> str | None:
    """The worker a sample ran on, without the process id (a retried shard is the same
    machine slot; what matters is that method and baseline ran side by side)."""
    return None if sample.worker is None else sample.worker.split(":")[0]


def combined_speedup(
    method: Sequence[SampleRecord], baseline: Sequence[SampleRecord], interval: bool = True
) -> tuple[float | None, Interval | None]:
    """Speedup of a distributed run: each worker's own ratio of medians (its method over its
    baseline, same prompts, same hardware), averaged with weights = the method's samples on
    that worker; the interval resamples prompts within each worker."""
    ours, theirs = by_worker(method), by_worker(baseline)
    shared = [w for w in ours if w in theirs]
    if not shared:
        return None, None
    weights = np.array([len(ours[w]) for w in shared], dtype=float)
    ratios = np.array(
        [
            np.median([s.tokens_per_sec for s in ours[w]])
            / np.median([s.tokens_per_sec for s in theirs[w]])
            for w in shared
        ]
    )
    value = float((weights * ratios).sum() / weights.sum())
    if not interval:
        return value, None
    draws = []
    for w in shared:
        worker_draws = _ratio_draws(ours[w], theirs[w])
        if worker_draws is None:
            return value, None
        draws.append(worker_draws)
    combined = (weights[:, None] * np.stack(draws)).sum(axis=0) / weights.sum()
    return value, _percentiles(combined)


def noise_warnings(
    speedup: float | None,
    speedup_ci: Interval | None,
    tps_median: float,
    tps_ci: Interval | None,
    load: MachineLoad | None,
) -> list[str]:
    """One-line reasons not to trust a summary's timing as it stands."""
    notes = []
    if load is not None and load.overloaded:
        end = "?" if load.load_end is None else f"{load.load_end:.1f}"
        notes.append(
            f"machine overloaded: load average {load.load_start:.1f} at start, {end} at end, "
            f"on {load.cpu_count} CPUs; rerun on an idle machine"
        )
    if speedup is not None and speedup_ci is not None:
        half = speedup_ci.half_width_over(speedup)
        if half > NOISY_HALF_WIDTH:
            notes.append(f"speedup interval is +-{100 * half:.0f}%: add prompts or runs")
    elif tps_ci is not None:
        half = tps_ci.half_width_over(tps_median)
        if half > NOISY_HALF_WIDTH:
            notes.append(f"tokens/s interval is +-{100 * half:.0f}%: add prompts or runs")
    elif speedup is not None:
        notes.append("no interval: a single prompt and run cannot show the noise")
    return notes


def machine_load(headers: Sequence[RunHeader], ends: Sequence[RunEnd]) -> MachineLoad | None:
    """The worst load any session of a file saw at its start and end (``None`` if unknown)."""
    starts = [float(h.load["load1"]) for h in headers if "load1" in h.load]
    finishes = [float(e.load["load1"]) for e in ends if "load1" in e.load]
    if not starts:
        return None
    cpus = min(int(h.load.get("cpu_count", 1)) for h in headers if h.load)
    return MachineLoad(cpus, max(starts), max(finishes) if finishes else None)
