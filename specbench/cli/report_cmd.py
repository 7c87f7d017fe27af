"""``specbench report``: tables and plots from results files or study directories; optionally
the acceptance profile JSON and a self-contained HTML page."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from specbench.cli.common import EXIT_INVALID_INPUT, console, fail, fail_with
from specbench.cli.tables import rich_table
from specbench.errors import SpecbenchError
from specbench.report.html import write_html
from specbench.report.plots import write_plots
from specbench.report.profile import build_profiles
from specbench.report.results import ResultsFile, load_many
from specbench.report.tables import comparison_data, file_tables, noise_notes
from specbench.run.output_paths import check_output_dir, check_output_file
from specbench.run.study import study_files


def report(
    files: list[Path] = typer.Argument(
        ..., help="Results JSONL files or study directories to compare."
    ),
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
    html: Path = typer.Option(
        None, "--html", help="Write one self-contained HTML page (tables, plots, environment)."
    ),
) -> None:
    """Summarise results: per method, per category (Spec-Bench style), the acceptance profile,
    a comparison across files, plots; a study directory stands for all of its files."""
    try:
        # Where the report goes is checked first: reading many files takes a while.
        if html is not None:
            check_output_file(html, "--html")
        if plots is not None and (not no_plots or html is not None):
            check_output_dir(plots, "--plots")
        if profile is not None:
            check_output_file(profile, "--profile")
        paths = expand(files)
        results = load_many(paths)
    except SpecbenchError as error:
        fail_with(error, EXIT_INVALID_INPUT)
    for result in results:
        tables = file_tables(result)
        console.print(rich_table(tables[0], console.width))
        for line in noise_notes(result.summaries):
            console.print(f"note: {line}", highlight=False, markup=False, soft_wrap=True)
        for table in tables[1:]:
            console.print(rich_table(table, console.width))
    if len(results) > 1:
        console.print(rich_table(comparison_data(results), console.width))
    if profile is not None:
        for path in _write_profiles(results[0], profile):
            console.print(f"profile: {path}", highlight=False, markup=False)
    written: list[Path] = []
    if not no_plots or html is not None:
        out_dir = plots or _default_plot_dir(files[0])
        try:
            if plots is None:
                check_output_dir(out_dir, "--plots (by default beside the first file)")
            written = write_plots(results, out_dir)
        except SpecbenchError as error:
            console.print(f"plots skipped: {error}", highlight=False, markup=False)
        if not no_plots:
            for path in written:
                console.print(f"plot: {path}", highlight=False, markup=False)
    if html is not None:
        write_html(results, written, html)
        console.print(f"html: {html}", highlight=False, markup=False)


def expand(paths: list[Path]) -> list[Path]:
    """Study directories become their results files, in study order."""
    out: list[Path] = []
    for path in paths:
        out += study_files(path) if path.is_dir() else [path]
    return out


def _default_plot_dir(first: Path) -> Path:
    return first / "report" if first.is_dir() else first.with_name(first.stem + "-report")


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
