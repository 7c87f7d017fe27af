"""``specbench report``: tables and plots from one or more results files."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.table import Table

from specbench.cli.common import EXIT_INVALID_INPUT, console, fail_with
from specbench.cli.tables import fmt, summary_table
from specbench.errors import SpecbenchError
from specbench.plots import write_plots
from specbench.report import ResultsFile, batch_points, category_table, load_many


def report(
    files: list[Path] = typer.Argument(..., help="Results JSONL files to compare."),
    plots: Path = typer.Option(
        None, "--plots", help="Folder for PNG plots; default: <first file>-report/."
    ),
    no_plots: bool = typer.Option(False, "--no-plots", help="Tables only."),
) -> None:
    """Summarise results files: per method, per category (Spec-Bench style), plus plots."""
    try:
        results = load_many(files)
    except SpecbenchError as error:
        fail_with(error, EXIT_INVALID_INPUT)
    for result in results:
        console.print(summary_table(result.summaries, title=result.label))
        table = _category_table(result)
        if table is not None:
            console.print(table)
        batches = _batch_table(result)
        if batches is not None:
            console.print(batches)
    if len(results) > 1:
        console.print(_comparison(results))
    if no_plots:
        return
    out_dir = plots or files[0].with_name(files[0].stem + "-report")
    try:
        written = write_plots(results, out_dir)
    except SpecbenchError as error:
        console.print(f"plots skipped: {error}", highlight=False, markup=False)
        return
    for path in written:
        console.print(f"plot: {path}", highlight=False, markup=False)


def _category_table(result: ResultsFile) -> Table | None:
    data = category_table(result)
    if data is None:
        return None
    table = Table(
        title=f"By category (speedup / tokens per target call): {result.label}",
        title_justify="left",
    )
    table.add_column("method", style="bold")
    for column in data.columns:
        table.add_column(column, justify="right")
    for method, cells in data.rows.items():
        row = [method]
        for column in data.columns:
            cell = cells.get(column)
            row.append(
                "-"
                if cell is None
                else f"{fmt(cell.speedup, '.2f', 'x')} / {cell.avg_tokens_per_step:.2f}"
            )
        table.add_row(*row)
    return table


def _batch_table(result: ResultsFile) -> Table | None:
    points = batch_points(result)
    if not points:
        return None
    table = Table(title=f"Latency vs throughput: {result.label}", title_justify="left")
    for column in ("method", "batch", "latency/seq (s)", "tok/s per seq", "throughput tok/s"):
        table.add_column(column, justify="left" if column == "method" else "right")
    for p in points:
        table.add_row(
            p.method,
            str(p.batch_size),
            f"{p.latency_s:.2f}",
            f"{p.tokens_per_sec_per_sequence:.1f}",
            f"{p.throughput_tokens_per_sec:.1f}",
        )
    return table


def _comparison(results: list[ResultsFile]) -> Table:
    table = Table(title="All files", title_justify="left")
    for column in ("file", "method", "tok/s", "speedup", "acceptance", "tokens/step"):
        table.add_column(column)
    for result in results:
        for s in result.summaries:
            table.add_row(
                result.label,
                s.method,
                f"{s.tokens_per_sec_median:.1f}",
                fmt(s.speedup, ".2f", "x"),
                fmt(s.acceptance_rate, ".3f"),
                f"{s.avg_tokens_per_step:.2f}",
            )
    return table
