"""``specbench report``: tables from one or more results files."""

from __future__ import annotations

from pathlib import Path

import typer

from specbench.cli.common import EXIT_INVALID_INPUT, console, fail_with
from specbench.cli.tables import summary_table
from specbench.errors import SpecbenchError
from specbench.report import load_many


def report(
    files: list[Path] = typer.Argument(..., help="Results JSONL files to compare."),
) -> None:
    """Summarise results files (medians, speedup, acceptance) method by method."""
    try:
        results = load_many(files)
    except SpecbenchError as error:
        fail_with(error, EXIT_INVALID_INPUT)
    for result in results:
        console.print(summary_table(result.summaries, title=result.label))
