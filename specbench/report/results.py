"""Reports from results files: summaries recomputed from the samples they hold.

Summaries are recomputed from sample records rather than read from summary records, so a
report of an interrupted run (which has no summaries yet) is still complete for what ran.
The category table follows Spec-Bench: its eight MT-Bench categories count as one column,
``mt_bench``, next to translation, summarization, qa, math_reasoning and rag.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from specbench.costs.units import header_unit_costs
from specbench.errors import SpecbenchError
from specbench.records import (
    AuditRecord,
    RunEnd,
    RunHeader,
    SampleRecord,
    SummaryRecord,
    read_records,
)
from specbench.report.summary import summarize
from specbench.report.uncertainty import machine_load

MT_BENCH_CATEGORIES = (
    "writing", "roleplay", "reasoning", "math", "coding", "extraction", "stem", "humanities",
)  # fmt: skip
SPEC_BENCH_COLUMNS = ("mt_bench", "translation", "summarization", "qa", "math_reasoning", "rag")
OVERALL = "overall"


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

    @property
    def baseline(self) -> str | None:
        value = self.header.preset.get("runs", {}).get("baseline")
        return str(value) if value is not None else None


def load_results(path: Path) -> ResultsFile:
    """Read a results file and summarise its samples against its baseline."""
    records = read_records(path)
    headers = [r for r in records if isinstance(r, RunHeader)]
    if not headers:
        raise SpecbenchError(f"{path} has no run header", "pass a file written by specbench run")
    samples = [r for r in records if isinstance(r, SampleRecord)]
    if not samples and any(isinstance(r, AuditRecord) for r in records):
        raise SpecbenchError(
            f"{path} is an audit file (written by specbench audit): report reads the results "
            "of specbench run",
            "pass a file written by specbench run; the audit printed its verdicts, and its "
            "file holds each test's figures",
        )
    if not samples:
        raise SpecbenchError(f"{path} holds no samples yet", "run or resume it first")
    result = ResultsFile(path=path, header=headers[0], samples=samples, summaries=[])
    ends = [r for r in records if isinstance(r, RunEnd)]
    load = machine_load(headers, ends)
    unit_costs = header_unit_costs(headers)
    result.summaries = summarize(
        samples, result.baseline, headers[0].run_id, load, unit_costs=unit_costs
    )
    return result


def load_many(paths: Sequence[Path]) -> list[ResultsFile]:
    return [load_results(path) for path in paths]


@dataclass
class CategoryTable:
    """Per method and category: speedup and mean tokens per target call (Spec-Bench style)."""

    columns: list[str]
    rows: dict[str, dict[str, SummaryRecord]]


def report_category(category: str | None, spec_bench: bool) -> str:
    """The column a sample's category falls in."""
    if category is None:
        return "uncategorised"
    if spec_bench and category in MT_BENCH_CATEGORIES:
        return "mt_bench"
    return category


def category_table(result: ResultsFile) -> CategoryTable | None:
    """Methods x categories, or ``None`` when the samples carry no categories."""
    categories = {s.category for s in result.samples}
    if categories <= {None}:
        return None
    spec_bench = bool(categories & set(SPEC_BENCH_COLUMNS[1:]))
    groups: dict[str, list[SampleRecord]] = {}
    for sample in result.samples:
        groups.setdefault(report_category(sample.category, spec_bench), []).append(sample)
    known = [c for c in SPEC_BENCH_COLUMNS if c in groups]
    columns = known + sorted(c for c in groups if c not in known) + [OVERALL]
    groups[OVERALL] = result.samples
    rows: dict[str, dict[str, SummaryRecord]] = {}
    for column in columns:
        summaries = summarize(
            groups[column], result.baseline, result.header.run_id, intervals=False
        )
        for summary in summaries:
            rows.setdefault(summary.method, {})[column] = summary
    return CategoryTable(columns=columns, rows=rows)


@dataclass
class BatchPoint:
    """One method at one batch size: what a sequence waits and what the machine delivers."""

    method: str
    batch_size: int
    latency_s: float
    throughput_tokens_per_sec: float
    tokens_per_sec_per_sequence: float


def batch_points(result: ResultsFile) -> list[BatchPoint]:
    """The latency / throughput trade-off, or ``[]`` when every sample ran at batch size 1."""
    # A server's level is every prompt at once, not a batch: the serving table shows it.
    batched = [s for s in result.summaries if s.serving is None]
    if all(s.batch_size == 1 for s in batched):
        return []
    points = [
        BatchPoint(
            method=s.method.split("-batch_size=")[0],
            batch_size=s.batch_size,
            latency_s=s.wall_s_median,
            throughput_tokens_per_sec=s.throughput_tokens_per_sec,
            tokens_per_sec_per_sequence=s.tokens_per_sec_median,
        )
        for s in batched
    ]
    return sorted(points, key=lambda p: (p.method, p.batch_size))
