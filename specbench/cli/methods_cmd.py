"""``specbench methods``: what is installed, where it comes from, what it needs."""

from __future__ import annotations

import typer
from rich.markup import escape
from rich.table import Table

from specbench.cli.common import EXIT_INVALID_INPUT, console, fail_with
from specbench.cli.tables import fields_table, listing_table
from specbench.errors import PluginError
from specbench.plugins import MethodInfo, discover_methods


def methods(
    name: str = typer.Argument(None, help="Show one method's parameters."),
) -> None:
    """List installed decoding methods (and plugins that failed to load)."""
    registry = discover_methods()
    if name:
        try:
            info = registry.get(name)
        except PluginError as error:
            fail_with(error, EXIT_INVALID_INPUT)
        console.print(_params_table(info))
        return
    table = listing_table(
        "Installed methods (entry-point group specbench.methods)",
        ("name", "package", "version", "needs", "exact", "description"),
        list(registry.methods),
    )
    for info in registry.methods.values():
        table.add_row(
            info.name,
            info.package,
            info.version,
            info.needs_text,
            "yes" if info.cls.exact else "lossy",
            info.cls.description,
        )
    console.print(table)
    for broken in registry.broken:
        console.print(
            f"[bold red]failed to load[/] {escape(broken.name)} from {escape(broken.package)} "
            f"{escape(broken.version)} ({escape(broken.value)}): {escape(broken.error)}",
            highlight=False,
        )


def _params_table(info: MethodInfo) -> Table:
    title = f"{info.name} ({info.package} {info.version}): {info.cls.description}"
    return fields_table(title, info.cls.Params)
