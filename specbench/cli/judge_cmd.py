"""``specbench judge``: train AutoJudge judges and manage the cache of trained ones."""

from __future__ import annotations

import json

import typer

from specbench.cli.common import EXIT_INVALID_INPUT, console, fail_with
from specbench.cli.tables import listing_table
from specbench.cli.train_cmd import note_renamed, train_preset
from specbench.errors import SpecbenchError
from specbench.judge import cache

app = typer.Typer(help="The cache of trained AutoJudge judges (train them with `specbench train`).")
cache_app = typer.Typer(help="Trained judges on disk.")
app.add_typer(cache_app, name="cache")


@app.command("train", hidden=True)
def train(
    preset: str = typer.Option(..., "--preset", "-p", help="Preset with an autojudge method."),
    force: bool = typer.Option(False, "--force", help="Mine and train again even if cached."),
) -> None:
    """The older spelling of ``specbench train``."""
    note_renamed("specbench judge train", "specbench train")
    train_preset(preset, force)


@cache_app.command("list")
def list_judges() -> None:
    """Stored judges, newest first."""
    judges = cache.list_judges()
    table = listing_table(
        f"Trained judges ({cache.judges_dir()})",
        ("key", "created", "target", "draft", "training prompts", "samples", "ROC-AUC"),
        [meta["key"] for meta in judges],
    )
    for meta in judges:
        report = meta.get("report", {})
        auc = report.get("roc_auc")
        table.add_row(
            meta["key"],
            meta.get("created_at", ""),
            str(meta.get("target")),
            str(meta.get("draft")),
            str(meta.get("training_prompts")),
            f"{report.get('samples')} ({report.get('important')} important)",
            "-" if auc is None else f"{auc:.3f}",
        )
    console.print(table)


@cache_app.command("show")
def show(key: str = typer.Argument(..., help="A key or a unique prefix of one.")) -> None:
    """Everything stored about one judge."""
    try:
        full = cache.resolve_key(key)
    except SpecbenchError as error:
        fail_with(error, EXIT_INVALID_INPUT)
    meta = json.loads((cache.judges_dir() / full / "meta.json").read_text())
    console.print_json(json.dumps(meta))


@cache_app.command("path")
def path(key: str = typer.Argument(None, help="A key; without one, the cache folder.")) -> None:
    """Where judges are stored (or one judge's folder)."""
    try:
        folder = cache.judges_dir() / cache.resolve_key(key) if key else cache.judges_dir()
    except SpecbenchError as error:
        fail_with(error, EXIT_INVALID_INPUT)
    console.print(str(folder), highlight=False, markup=False)


@cache_app.command("clear")
def clear(
    key: str = typer.Argument(None, help="Delete only this judge."),
    all_judges: bool = typer.Option(False, "--all", help="Delete every stored judge."),
) -> None:
    """Delete one stored judge, or all with --all."""
    if key is None and not all_judges:
        fail_with(
            SpecbenchError("say which judge to delete", "give a KEY, or --all"), EXIT_INVALID_INPUT
        )
    try:
        count = cache.clear(key)
    except SpecbenchError as error:
        fail_with(error, EXIT_INVALID_INPUT)
    console.print(f"deleted {count} judge(s)")
