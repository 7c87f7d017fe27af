"""``specbench backends``: the installed model backends and the fields of their tables."""

from __future__ import annotations

import typer

from specbench.cli.common import EXIT_INVALID_INPUT, console, fail_with
from specbench.cli.tables import fields_table, listing_table
from specbench.errors import SpecbenchError
from specbench.models.backends import discover_backends


def backends(
    name: str = typer.Argument(None, help="Show one backend's fields with their defaults."),
) -> None:
    """List model backends (``backend = "..."`` in [models.target] and [models.draft]); with
    a NAME, every field its tables take, with defaults, from the backend's own schema."""
    registry = discover_backends()
    if name:
        try:
            backend = registry.get(name)
        except SpecbenchError as error:
            fail_with(error, EXIT_INVALID_INPUT)
        title = f'backend = "{name}": {backend.description}'
        console.print(fields_table(title, backend.Spec, skip=("backend",)))
        doc = (backend.Spec.__doc__ or "").strip()
        if doc:
            console.print(doc, highlight=False, markup=False, soft_wrap=True)
        return
    table = listing_table(
        "Model backends (entry-point group specbench.backends)",
        ("name", "description"),
        list(registry.backends),
    )
    for backend_name, backend in registry.backends.items():
        table.add_row(backend_name, backend.description)
    console.print(table)
    for broken, reason in registry.broken.items():
        console.print(f"failed to load {broken}: {reason}", highlight=False, markup=False)
    console.print("Fields of one: specbench backends NAME", highlight=False, markup=False)
