"""``specbench presets``: list the presets that can be run, and show one."""

from __future__ import annotations

from pathlib import Path
from typing import cast

import typer
from rich.syntax import Syntax

from specbench.cli.common import EXIT_INVALID_INPUT, console, err_console, fail, fail_with
from specbench.cli.tables import listing_table
from specbench.errors import SpecbenchError
from specbench.plugins import discover_methods
from specbench.presets.formats import Format, dump, format_of
from specbench.presets.schema import (
    available_presets,
    find_preset,
    load_preset,
    read_preset_file,
    write_imported,
)
from specbench.run.output_paths import check_output_file

app = typer.Typer(
    help="List presets, show one, or convert one to another format.", invoke_without_command=True
)


@app.callback()
def presets(ctx: typer.Context) -> None:
    """List presets: name, description and file."""
    if ctx.invoked_subcommand is not None:
        return
    found = available_presets()
    table = listing_table("Presets", ("name", "description", "file"), list(found))
    for name, path in found.items():
        try:
            description = str(read_preset_file(path).get("description", ""))
        except SpecbenchError as error:
            description = f"[red]unreadable: {error}[/]"
        table.add_row(name, description, str(path))
    console.print(table)


@app.command()
def show(name: str = typer.Argument(..., help="Preset name or path.")) -> None:
    """Print a preset file."""
    try:
        path = find_preset(name)
    except SpecbenchError as error:
        fail_with(error)
    console.print(f"# {path}", highlight=False, markup=False)
    lexer = format_of(path.suffix) or "toml"
    console.print(Syntax(path.read_text(encoding="utf-8"), lexer, theme="ansi_dark"))


@app.command()
def convert(
    name: str = typer.Argument(..., help="Preset name or path."),
    to: str = typer.Option(..., "--to", help="yaml, toml or json."),
    output: Path = typer.Option(None, "--output", "-o", help="Write here instead of stdout."),
) -> None:
    """Write a preset in another format (same schema; comments are not carried over). Only a
    valid preset is converted: a broken one would be copied with its faults."""
    if to not in ("yaml", "toml", "json"):
        fail(f"--to {to!r} is not a preset format", EXIT_INVALID_INPUT)
    fmt = cast(Format, to)
    try:
        path = find_preset(name)
        load_preset(str(path), discover_methods())  # every problem, before anything is written
        text = dump(read_preset_file(path), fmt)
        if output is not None:
            check_output_file(output, "--output")
    except SpecbenchError as error:
        fail_with(error)
    if output is None:
        console.print(text, highlight=False, markup=False, end="", soft_wrap=True)
        return
    output.write_text(text, encoding="utf-8")
    console.print(f"wrote {output}", highlight=False, markup=False)


@app.command("import")
def import_(
    file: Path = typer.Argument(..., help="A vLLM study, draft/target or split JSON config."),
    output: Path = typer.Option(
        None, "--output", "-o", help="Write here (.toml, .yaml or .json) instead of stdout."
    ),
) -> None:
    """Turn another tool's config (a vLLM study YAML; a draft/target YAML; a JSON file of
    models, methods and experiments) into a specbench preset. Fields without an equivalent
    become comments; several experiments become one preset each (OUT's stem + name)."""
    try:
        if not file.is_file():
            raise SpecbenchError(f"{file} does not exist", "check the path")
        if output is not None:
            check_output_file(output, "--output")
        written = write_imported(file, discover_methods(), output)
    except SpecbenchError as error:
        fail_with(error)
    for target, text, problems in written:
        if target is None:
            console.print(text, highlight=False, markup=False, end="", soft_wrap=True)
        else:
            target.write_text(text, encoding="utf-8")
            console.print(f"wrote {target}", highlight=False, markup=False)
        for line in problems:
            err_console.print(
                f"note: the imported preset does not validate yet: {line}",
                highlight=False, markup=False, soft_wrap=True,
            )  # fmt: skip
