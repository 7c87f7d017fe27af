"""``specbench validate``: check presets without running them."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import typer
from rich.markup import escape

from specbench.cli.common import EXIT_INVALID_INPUT, console, err_console
from specbench.errors import SpecbenchError
from specbench.models.loading import check_models
from specbench.plugins import discover_methods
from specbench.presets.schema import available_presets, load_preset


def validate(
    presets: list[str] = typer.Argument(
        None, help="Preset files or names; default: every preset found."
    ),
) -> None:
    """Check presets: schema, method parameters, references, method needs and tokenizers."""
    registry = discover_methods()
    targets = presets or [str(path) for path in available_presets().values()]
    if not targets:
        err_console.print("error: no presets found. Fix: pass preset files to validate")
        raise typer.Exit(EXIT_INVALID_INPUT)
    invalid = 0
    for target in targets:
        try:
            resolved = load_preset(target, registry)
        except SpecbenchError as error:
            invalid += 1
            _print_invalid(str(error).splitlines())
            continue
        issues, notes = check_models(resolved.preset.models)
        if issues:
            invalid += 1
            _print_invalid(
                f"{resolved.source}: {f}: {message}. Fix: {hint}" for f, message, hint in issues
            )
            continue
        labels = ", ".join(m.label for m in resolved.methods)
        console.print(
            f"[green]ok[/] {escape(str(Path(resolved.source)))} ({labels})", highlight=False
        )
        notes += [f'methods = "all" skipped {name}: {reason}' for name, reason in resolved.skipped]
        for note in notes:
            console.print(f"   [yellow]note:[/] {escape(note)}", highlight=False, soft_wrap=True)
    if invalid:
        raise typer.Exit(EXIT_INVALID_INPUT)


def _print_invalid(lines: Iterable[str]) -> None:
    for line in lines:
        err_console.print(f"[bold red]invalid:[/] {escape(line)}", highlight=False, soft_wrap=True)
