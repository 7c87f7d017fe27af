"""rich tables built from progress snapshots and summaries."""

from __future__ import annotations

from collections.abc import Sequence

from pydantic import BaseModel
from rich.table import Table

from specbench.records import SummaryRecord
from specbench.report.fields import field_rows
from specbench.report.tables import (
    TableData,
    fmt,
    percent,
    speedup_text,
    summary_data,
)
from specbench.run.progress import MethodProgress


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


def fields_table(title: str, model: type[BaseModel], skip: Sequence[str] = ()) -> Table:
    """Every field of a pydantic model (method parameters, a backend's model table): name,
    type, default and description, as the model declares them."""
    rows = field_rows(model, skip)
    table = listing_table(
        title, ("field", "type", "default", "description"), [r.name for r in rows]
    )
    for row in rows:
        table.add_row(row.name, row.type, row.default, row.description)
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


def summary_table(
    summaries: Sequence[SummaryRecord], title: str | None = None, width: int | None = None
) -> Table:
    """The final table of a run or a report: medians with their spread."""
    return rich_table(summary_data(summaries, title or ""), width)


def rich_table(data: TableData, width: int | None = None) -> Table:
    """A :class:`TableData` as a rich table. No cell is ever cut short: where the table is
    wider than ``width`` columns, each column shrinks to its longest word (cells wrap at
    spaces), and if that is still too wide, columns are dropped from the right and the
    caption names them."""
    cells = [[column, *(str(row[i]) for row in data.rows)] for i, column in enumerate(data.columns)]
    widest = [max(len(line) for cell in col for line in cell.splitlines() or [""]) for col in cells]
    words = [max((len(w) for cell in column for w in cell.split()), default=1) for column in cells]
    if width is None or _table_width(widest) <= width:
        return _build(data, len(data.columns), None, None)
    keep = len(data.columns)
    while keep > 2 and _table_width(words[:keep]) > width:
        keep -= 1
    return _build(data, keep, words, width)


def _table_width(columns: Sequence[int]) -> int:
    return sum(columns) + 3 * len(columns) + 1  # one space each side, a border between


def _build(data: TableData, keep: int, words: Sequence[int] | None, width: int | None) -> Table:
    caption = data.caption or ""
    if keep < len(data.columns):
        dropped = ", ".join(data.columns[keep:])
        caption = f"{caption}\n" if caption else ""
        caption += f"Left out to fit {width} columns: {dropped} (a wider terminal shows them)."
    table = Table(
        title=data.title or None,
        title_justify="left",
        caption=caption or None,
        caption_justify="left",
    )
    for i, column in enumerate(data.columns[:keep]):
        table.add_column(
            column,
            justify="right" if data.numeric[i] else "left",
            style="bold" if i == 0 else None,
            no_wrap=i == 0,
            min_width=None if words is None else words[i],
            max_width=None if words is None else words[i],
        )
    for row in data.rows:
        table.add_row(*row[:keep])
    return table
