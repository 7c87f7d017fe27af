"""Progress snapshots the runner hands to a callback; the CLI renders them.

The library never prints: it reports through this callback.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from specbench.records import SampleRecord, SummaryRecord
from specbench.report.summary import summarize

Phase = Literal["loading", "preparing", "warmup", "running", "done"]


@dataclass
class MethodProgress:
    """One method's row: how far it is and its running summary (``None`` before any sample)."""

    label: str
    done: int
    total: int
    summary: SummaryRecord | None = None
    #: Distributed runs: samples done per worker.
    by_worker: dict[str, int] = field(default_factory=dict)


@dataclass
class Progress:
    """Where a run stands. ``last`` is the sample that just finished, if any."""

    phase: Phase
    message: str
    output: Path
    methods: list[MethodProgress] = field(default_factory=list)
    last: SampleRecord | None = None
    #: Tokens the models have processed so far (for heartbeats during long silent phases).
    processed: Callable[[], int] | None = None

    @property
    def done(self) -> int:
        return sum(m.done for m in self.methods)

    @property
    def total(self) -> int:
        return sum(m.total for m in self.methods)


ProgressCallback = Callable[[Progress], None]


class ProgressTracker:
    """Running per-method summaries for the progress callback (local runs and the Ray
    driver alike)."""

    def __init__(
        self,
        labels: Sequence[str],
        keys: Iterable[tuple[str, str, int]],
        previous: Sequence[SampleRecord],
        baseline: str,
        run_id: str,
        output: Path,
    ) -> None:
        """``keys``: every (label, prompt id, run) of the run."""
        self.labels = list(labels)
        wanted = set(keys)
        self.totals = {label: sum(key[0] == label for key in wanted) for label in labels}
        self.samples = [s for s in previous if (s.method, s.prompt_id, s.run) in wanted]
        self.baseline = baseline
        self.run_id = run_id
        self.output = output
        self.processed: Callable[[], int] | None = None
        self._intervals_at = 0.0
        self._intervals: dict[str, tuple[tuple[float, float] | None, ...]] = {}

    def add(self, record: SampleRecord) -> Progress:
        self.samples.append(record)
        progress = self.snapshot("running", f"{record.method} on {record.prompt_id}")
        progress.last = record
        return progress

    def snapshot(self, phase: Phase, message: str) -> Progress:
        # Bootstrap intervals cost tens of milliseconds: refresh them at most once a second
        # (between samples, never inside a timed generation).
        fresh = time.monotonic() - self._intervals_at > 1.0 or phase == "done"
        if fresh:
            self._intervals_at = time.monotonic()
        listed = summarize(self.samples, self.baseline, self.run_id, intervals=fresh)
        for summary in listed:
            if fresh:
                self._intervals[summary.method] = (summary.tokens_per_sec_ci, summary.speedup_ci)
            else:
                tps_ci, speedup_ci = self._intervals.get(summary.method, (None, None))
                summary.tokens_per_sec_ci, summary.speedup_ci = tps_ci, speedup_ci
        summaries = {s.method: s for s in listed}
        rows = []
        for label in self.labels:
            mine = [s for s in self.samples if s.method == label]
            workers: dict[str, int] = {}
            for s in mine:
                if s.worker is not None:
                    name = s.worker.split("@")[0]
                    workers[name] = workers.get(name, 0) + 1
            rows.append(
                MethodProgress(label, len(mine), self.totals[label], summaries.get(label), workers)
            )
        return Progress(phase, message, self.output, rows, processed=self.processed)
