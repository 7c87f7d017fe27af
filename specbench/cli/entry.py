"""The console script's entry point, kept free of heavy imports.

Importing the CLI imports torch, which takes seconds; a Ctrl-C then must end with one line,
not a traceback, so the import happens inside :func:`main`'s guard.
"""

from __future__ import annotations

import sys
from typing import Any

EXIT_INTERRUPTED = 130


def command() -> Any:
    """The click command behind ``specbench``, with flags shown as flags in ``--help``.

    Typer's rich help prints a type for every option, ``--quiet -q <bool>`` included, which
    reads as if the flag took a value; flags get an empty metavar instead.
    """
    import typer

    from specbench.cli.main import app

    root = typer.main.get_command(app)
    _flags_without_metavar(root)
    return root


def _flags_without_metavar(command: Any) -> None:
    for param in command.params:
        if getattr(param, "is_flag", False):
            param.metavar = ""
    original = command.get_help_option

    def help_option(ctx: Any) -> Any:
        option = original(ctx)
        if option is not None:
            option.metavar = ""
        return option

    command.get_help_option = help_option
    for sub in getattr(command, "commands", {}).values():
        _flags_without_metavar(sub)


def main() -> None:
    """Run ``specbench``; Ctrl-C at any point, start-up included, exits with one line."""
    try:
        command()(prog_name="specbench")
    except KeyboardInterrupt:
        sys.stderr.write("interrupted\n")
        sys.exit(EXIT_INTERRUPTED)
