"""rich tables built from progress snapshots and summaries."""

from __future__ import annotations

from collections.abc import Sequence

from rich.table import Table

from specbench.progress import MethodProgress
from specbench.records import SummaryRecord
from specbench.report_tables import (
    TableData,
    fmt,
    percent,
    speedup_text,
    summary_data,
)


def listing_table(
    title: str, columns: Sequence[str], names: Sequence[str], **options: object
) -> Table:
    """A table whose first column holds names a user types: never truncated or wrapped, even
    in a narrow terminal (the other columns fold instead)."""
    table = Table(title=title, title_justify="left", **options)  # type: ignore[arg-type]
    width = max([len(columns[0]), *(len(name) for name in names)])
    table.add_column(columns[0], no_wrap=True, min_width=width, style="bold")
    for column in columns[1:]:
        table.add_column(column, overflow="fold")
    return table


def progress_table(rows: Sequence[MethodProgress], title: str | None = None) -> Table:
    """The live table: one row per method."""
    table = Table(title=title, title_justify="left", expand=False)
    table.add_column("method", style="bold")
    table.add_column("progress", justify="right")
    table.add_column("tok/s", justify="right")
    table.add_column("speedup [95% CI]", justify="right")
    table.add_column("acceptance", justify="right")
    table.add_column("tokens/step", justify="right")
    show_score = any(r.summary and r.summary.score_mean is not None for r in rows)
    if show_score:
        table.add_column("score", justify="right")
    show_workers = any(r.by_worker for r in rows)
    if show_workers:
        table.add_column("per worker")
    for row in rows:
        s = row.summary
        cells = [
            row.label,
            f"{row.done}/{row.total}",
            fmt(s.tokens_per_sec_median if s else None, ".1f"),
            speedup_text(s),
            fmt(s.acceptance_rate if s else None, ".3f"),
            fmt(s.avg_tokens_per_step if s else None, ".2f"),
        ]
        if show_score:
            cells.append(percent(s.score_mean if s else None))
        if show_workers:
            cells.append(" ".join(f"{w}:{n}" for w, n in sorted(row.by_worker.items())))
        table.add_row(*cells)
    return table


def summary_table(summaries: Sequence[SummaryRecord], title: str | None = None) -> Table:
    """The final table of a run or a report: medians with their spread."""
    return rich_table(summary_data(summaries, title or ""))


def rich_table(data: TableData) -> Table:
    """A :class:`TableData` as a rich table (names in the first column never truncated)."""
    table = Table(
        title=data.title or None,
        title_justify="left",
        caption=data.caption or None,
        caption_justify="left",
    )
    for i, column in enumerate(data.columns):
        table.add_column(
            column,
            justify="right" if data.numeric[i] else "left",
            style="bold" if i == 0 else None,
            no_wrap=i == 0,
        )
    for row in data.rows:
        table.add_row(*row)
    return table
