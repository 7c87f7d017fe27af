"""``specbench presets``: list the presets that can be run, and show one."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.syntax import Syntax

from specbench.cli.common import EXIT_INVALID_INPUT, console, fail, fail_with
from specbench.cli.tables import listing_table
from specbench.errors import SpecbenchError
from specbench.preset_formats import dump, format_of
from specbench.presets import available_presets, find_preset, read_preset_file

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
    """Write a preset in another format (same schema; comments are not carried over)."""
    if to not in ("yaml", "toml", "json"):
        fail(f"--to {to!r} is not a preset format", EXIT_INVALID_INPUT)
    try:
        path = find_preset(name)
        text = dump(read_preset_file(path), to)  # type: ignore[arg-type]
    except SpecbenchError as error:
        fail_with(error)
    if output is None:
        console.print(text, highlight=False, markup=False, end="", soft_wrap=True)
        return
    output.write_text(text, encoding="utf-8")
    console.print(f"wrote {output}", highlight=False, markup=False)
