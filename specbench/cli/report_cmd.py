"""``specbench report``: tables and plots from one or more results files."""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.table import Table

from specbench.cli.common import EXIT_INVALID_INPUT, console, fail, fail_with
from specbench.cli.tables import fmt, noise_lines, summary_table
from specbench.errors import SpecbenchError
from specbench.plots import write_plots
from specbench.profile import build_profiles, consistency
from specbench.report import ResultsFile, batch_points, category_table, load_many


def report(
    files: list[Path] = typer.Argument(..., help="Results JSONL files to compare."),
    plots: Path = typer.Option(
        None, "--plots", help="Folder for PNG plots; default: <first file>-report/."
    ),
    no_plots: bool = typer.Option(False, "--no-plots", help="Tables only."),
    profile: Path = typer.Option(
        None,
        "--profile",
        help="Write the acceptance profile (speculation_profile.json, schema 1.0) of the first "
        "file: PATH for one drafting method, else PATH's stem + .<method>.json for each.",
    ),
) -> None:
    """Summarise results files: per method, per category (Spec-Bench style), plus plots."""
    try:
        results = load_many(files)
    except SpecbenchError as error:
        fail_with(error, EXIT_INVALID_INPUT)
    for result in results:
        console.print(summary_table(result.summaries, title=result.label))
        for line in noise_lines(result.summaries):
            console.print(f"note: {line}", highlight=False, markup=False)
        profile_table = _profile_table(result)
        if profile_table is not None:
            console.print(profile_table)
        table = _category_table(result)
        if table is not None:
            console.print(table)
        batches = _batch_table(result)
        if batches is not None:
            console.print(batches)
    if len(results) > 1:
        console.print(_comparison(results))
    if profile is not None:
        for path in _write_profiles(results[0], profile):
            console.print(f"profile: {path}", highlight=False, markup=False)
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


def _profile_table(result: ResultsFile) -> Table | None:
    drafting = [s for s in result.summaries if s.position_marginal]
    if not drafting:
        return None
    table = Table(
        title=f"Acceptance profile: {result.label}",
        title_justify="left",
        caption="AL = 1 + sum(marginal), per step; per-request = mean over samples. "
        "conditional = accepted at i / reached i; marginal = accepted at i / steps.",
        caption_justify="left",
    )
    for column in (
        "method",
        "AL (per step)",
        "AL (per request)",
        "tokens/call (per step)",
        "tokens/call (per request)",
        "AL check",
        "conditional by position",
        "marginal by position",
    ):
        table.add_column(
            column, justify="left" if column.startswith(("method", "cond", "marg")) else "right"
        )
    for s in drafting:
        check = consistency(s)
        table.add_row(
            s.method,
            fmt(s.acceptance_length, ".3f"),
            fmt(s.acceptance_length_request_mean, ".3f"),
            f"{s.avg_tokens_per_step:.3f}",
            fmt(s.tokens_per_step_request_mean, ".3f"),
            ("ok" if check["passed"] else "off") + f" ({check['abs_delta']:.3f})",
            " ".join(fmt(v, ".2f") for v in s.position_acceptance),
            " ".join(f"{v:.2f}" for v in s.position_marginal),
        )
    return table


def _write_profiles(result: ResultsFile, path: Path) -> list[Path]:
    profiles = build_profiles(result.summaries, result.samples, result.header)
    if not profiles:
        fail("no method in this file drafted anything: no acceptance profile to write")
    path.parent.mkdir(parents=True, exist_ok=True)
    written = []
    for label, payload in profiles.items():
        target = path if len(profiles) == 1 else path.with_name(f"{path.stem}.{label}.json")
        target.write_text(json.dumps(payload, indent=2) + "\n", encoding="utf-8")
        written.append(target)
    return written
