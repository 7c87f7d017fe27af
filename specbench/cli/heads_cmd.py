"""``specbench heads``: train the drafting heads a preset's methods need, and manage them."""

from __future__ import annotations

import typer

from specbench.cli.common import EXIT_INVALID_INPUT, console, fail_with
from specbench.cli.tables import listing_table
from specbench.cli.train_cmd import note_renamed, train_preset
from specbench.errors import SpecbenchError
from specbench.heads.store import STORE, heads_dir

app = typer.Typer(
    help="The cache of trained EAGLE-3 and Medusa heads (train them with `specbench train`)."
)


@app.command("train", hidden=True)
def train(
    preset: str = typer.Option(
        ..., "--preset", "-p", help="Preset with an eagle3 or medusa method."
    ),
    force: bool = typer.Option(False, "--force", help="Train again even if cached."),
) -> None:
    """The older spelling of ``specbench train``."""
    note_renamed("specbench heads train", "specbench train")
    train_preset(preset, force)


@app.command("list")
def list_heads() -> None:
    """Stored heads, newest first."""
    metas = STORE.list()
    table = listing_table(
        f"Trained heads ({heads_dir()})",
        ("key", "created", "kind", "target", "shape", "steps", "holdout top-1"),
        [meta["key"] for meta in metas],
    )
    for meta in metas:
        training = meta.get("training", {})
        accuracy = meta.get("holdout_top1") or []
        table.add_row(
            meta["key"],
            meta.get("created_at", ""),
            meta.get("kind", ""),
            str((meta.get("target") or {}).get("model")),
            meta.get("shape")
            or f"{training.get('num_heads')} heads x {training.get('num_layers')}",
            str(training.get("steps")),
            ", ".join("-" if a is None else f"{a:.2f}" for a in accuracy),
        )
    console.print(table)


@app.command("show")
def show(key: str = typer.Argument(..., help="A key or a unique prefix of one.")) -> None:
    """Everything stored about one set of heads."""
    try:
        full = STORE.resolve(key)
    except SpecbenchError as error:
        fail_with(error, EXIT_INVALID_INPUT)
    console.print_json((heads_dir() / full / "meta.json").read_text())


@app.command("path")
def path(key: str = typer.Argument(None, help="A key; without one, the cache folder.")) -> None:
    """Where heads are stored (or one set's folder, usable as params.heads)."""
    try:
        folder = heads_dir() / STORE.resolve(key) if key else heads_dir()
    except SpecbenchError as error:
        fail_with(error, EXIT_INVALID_INPUT)
    console.print(str(folder), highlight=False, markup=False)


@app.command("clear")
def clear(
    key: str = typer.Argument(None, help="Delete only these heads."),
    all_heads: bool = typer.Option(False, "--all", help="Delete every stored set of heads."),
) -> None:
    """Delete one stored set of heads, or all with --all."""
    if key is None and not all_heads:
        missing = SpecbenchError("say which heads to delete", "give a KEY, or --all")
        fail_with(missing, EXIT_INVALID_INPUT)
    try:
        count = STORE.clear(key)
    except SpecbenchError as error:
        fail_with(error, EXIT_INVALID_INPUT)
    console.print(f"deleted {count} set(s) of heads")


__all__ = ["app"]
