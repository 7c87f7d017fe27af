"""Progress snapshots the runner hands to a callback; the CLI renders them.

The library never prints: it reports through this callback.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from specbench.records import SampleRecord, SummaryRecord

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
