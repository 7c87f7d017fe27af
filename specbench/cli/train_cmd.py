"""``specbench train``: train what a preset's methods need before a run (AutoJudge's judges,
EAGLE-3 and Medusa heads), or find it already trained in the cache."""

from __future__ import annotations

import typer

from specbench.cli.common import EXIT_FAILURE, EXIT_INVALID_INPUT, console, fail_with, note
from specbench.errors import SpecbenchError
from specbench.plugins import discover_methods
from specbench.presets.schema import load_preset
from specbench.run.training import train_methods


def train(
    preset: str = typer.Option(..., "--preset", "-p", help="Preset name or path."),
    force: bool = typer.Option(False, "--force", help="Train again even if cached."),
) -> None:
    """Train (or find in the cache) what every method of a preset needs: AutoJudge's judge,
    EAGLE-3 and Medusa heads. `specbench judge` and `specbench heads` manage the caches."""
    train_preset(preset, force)


def train_preset(preset: str, force: bool) -> None:
    """Train what every method of ``preset`` needs, printing progress and one line each."""
    try:
        resolved = load_preset(preset, discover_methods())
    except SpecbenchError as error:
        fail_with(error, EXIT_INVALID_INPUT)
    with console.status("starting") as status:

        def say(message: str) -> None:
            status.update(message)
            console.print(message, highlight=False, markup=False)

        try:
            summaries = train_methods(resolved, force=force, on_message=say)
        except SpecbenchError as error:
            fail_with(error, EXIT_FAILURE)
    if not summaries:
        fail_with(
            SpecbenchError(
                f"preset '{resolved.name}' has no method that trains anything",
                "add autojudge, or eagle3 without params.head, or medusa without params.heads",
            ),
            EXIT_INVALID_INPUT,
        )
    for line in summaries:
        console.print(line, highlight=False, markup=False)


def note_renamed(old: str, new: str) -> None:
    """The one note an older command spelling prints before it runs."""
    note(f"`{old}` is now `{new}`")
