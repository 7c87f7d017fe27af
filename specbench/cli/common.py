"""Console handles and the one way commands report failure."""

from __future__ import annotations

import sys
from collections.abc import Collection, Mapping, Sequence
from typing import Any, NoReturn

import typer
from rich.console import Console
from rich.markup import escape

from specbench.errors import SpecbenchError
from specbench.plugins import discover_methods
from specbench.presets.schema import (
    Override,
    ResolvedPreset,
    load_preset,
    parse_override,
)

# Piped output is not wrapped at 80 columns: logs and tables stay one line per row.
console = Console(width=None if sys.stdout.isatty() else 200)
err_console = Console(stderr=True, width=None if sys.stderr.isatty() else 200)

#: The help of every command's ``--set``: the one description of the override syntax.
SET_HELP = (
    "Override any preset field (repeatable): --set sampling.top_p=0.9. Lists by position or "
    "label: methods.0.params.k=8, methods.speculative.params.k=8. Values are TOML (8, true, "
    '"text", [1, 2], { k = 4 }), JSON ({"k": 4}) or else a bare string; setting '
    "prompts.source, or a field only another source has (prompts.path=q.jsonl), switches the "
    "prompt source."
)

EXIT_FAILURE = 1
EXIT_INVALID_INPUT = 2
EXIT_INTERRUPTED = 130


def fail(message: str, code: int = EXIT_FAILURE) -> NoReturn:
    """Print ``error: message`` (one line per problem) on stderr and exit with ``code``."""
    for line in message.splitlines() or [""]:
        err_console.print(f"[bold red]error:[/] {escape(line)}", highlight=False, soft_wrap=True)
    raise typer.Exit(code)


def fail_with(error: SpecbenchError, code: int = EXIT_INVALID_INPUT) -> NoReturn:
    fail(str(error), code)


def note(text: str) -> None:
    """One ``note:`` line on stderr: something the user gave that works differently than
    written (an older spelling, a plugin that did not load), never dropped without a word."""
    err_console.print(f"note: {text}", highlight=False, markup=False, soft_wrap=True)


def flag_overrides(flags: Mapping[str, tuple[str, Any]]) -> list[Override]:
    """Preset overrides from value flags, ``{"--runs": ("runs.count", 2)}``; unset flags
    (``None``) are left out, and each override names its flag for error messages."""
    return [
        Override(field, value, f"{flag} {value}")
        for flag, (field, value) in flags.items()
        if value is not None
    ]


def resolve_preset(
    preset: str, assignments: Sequence[str] | None, flags: Mapping[str, tuple[str, Any]]
) -> ResolvedPreset:
    """A preset with the command's overrides: its value flags (``{"--runs": ("runs.count",
    2)}``, unset ones left out) and every ``--set``; the one override path of every command."""
    overrides = [parse_override(a) for a in assignments or []] + flag_overrides(flags)
    return load_preset(preset, discover_methods(), overrides)


def typed_arguments(ctx: typer.Context, skip: Collection[str] = ()) -> list[str]:
    """The options of the running command the user gave (not left at their defaults), as
    command-line words in the command's order; ``skip`` names parameters to leave out. What
    a printed resume command repeats, read from the parsed command line itself."""
    words: list[str] = []
    for param in ctx.command.params:
        name = param.name or ""
        if param.param_type_name != "option" or name in skip:
            continue
        source = ctx.get_parameter_source(name)
        if source is None or source.name == "DEFAULT":
            continue
        flag = max(param.opts, key=len)
        value = ctx.params.get(name)
        if getattr(param, "is_flag", False):
            words += [flag] if value else []
            continue
        for item in value if isinstance(value, list | tuple) else [value]:
            words += [flag, str(item)]
    return words
