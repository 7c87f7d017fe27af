"""Reports from results files: summaries recomputed from the samples they hold.

Summaries are recomputed from sample records rather than read from summary records, so a
report of an interrupted run (which has no summaries yet) is still complete for what ran.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from specbench.errors import SpecbenchError
from specbench.records import RunHeader, SampleRecord, SummaryRecord, read_records
from specbench.summary import summarize


@dataclass
class ResultsFile:
    """One results file: its first header, its samples and their summaries."""

    path: Path
    header: RunHeader
    samples: list[SampleRecord]
    summaries: list[SummaryRecord]

    @property
    def label(self) -> str:
        return f"{self.header.preset_name} ({self.path.name})"


def load_results(path: Path) -> ResultsFile:
    """Read a results file and summarise its samples against its baseline."""
    records = read_records(path)
    headers = [r for r in records if isinstance(r, RunHeader)]
    if not headers:
        raise SpecbenchError(f"{path} has no run header", "pass a file written by specbench run")
    samples = [r for r in records if isinstance(r, SampleRecord)]
    baseline = headers[0].preset.get("runs", {}).get("baseline")
    return ResultsFile(
        path=path,
        header=headers[0],
        samples=samples,
        summaries=summarize(samples, baseline, headers[0].run_id),
    )


def load_many(paths: Sequence[Path]) -> list[ResultsFile]:
    return [load_results(path) for path in paths]
