"""``specbench presets``: list the presets that can be run, and show one."""

from __future__ import annotations

import typer
from rich.syntax import Syntax

from specbench.cli.common import console, fail_with
from specbench.cli.tables import listing_table
from specbench.errors import SpecbenchError
from specbench.presets import available_presets, find_preset, read_preset_file

app = typer.Typer(help="List presets, or show one.", invoke_without_command=True)


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
    console.print(Syntax(path.read_text(encoding="utf-8"), "toml", theme="ansi_dark"))
