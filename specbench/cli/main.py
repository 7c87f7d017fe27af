"""The root ``specbench`` app; each command lives in its own module."""

from __future__ import annotations

import typer

from specbench.cli import (
    audit_cmd,
    backends_cmd,
    heads_cmd,
    judge_cmd,
    methods_cmd,
    models_cmd,
    presets_cmd,
    replay_cmd,
    report_cmd,
    run_cmd,
    train_cmd,
    validate_cmd,
)
from specbench.cli.common import note
from specbench.entry_points import load_entry_points
from specbench.plugins import COMMAND_GROUP, CommandPlugin


def make_app() -> typer.Typer:
    """The CLI: the built-in commands, then every command plugin's (entry-point group
    ``specbench.commands``); a plugin that fails to load is named on stderr, the rest run."""
    app = typer.Typer(
        name="specbench",
        help="Benchmark speculative decoding: speed, acceptance, exactness and quality, "
        "side by side.",
        no_args_is_help=True,
        pretty_exceptions_enable=False,
        add_completion=False,
    )
    app.command("run")(run_cmd.run)
    app.command("validate")(validate_cmd.validate)
    app.command("audit")(audit_cmd.audit)
    app.command("train")(train_cmd.train)
    app.command("methods")(methods_cmd.methods)
    app.command("backends")(backends_cmd.backends)
    app.add_typer(presets_cmd.app, name="presets")
    app.add_typer(models_cmd.app, name="models")
    app.add_typer(judge_cmd.app, name="judge")
    app.add_typer(heads_cmd.app, name="heads")
    app.command("report")(report_cmd.report)
    app.command("replay")(replay_cmd.replay_command)
    group = load_entry_points(COMMAND_GROUP, CommandPlugin)
    for entry in group.loaded.values():
        entry.cls().register(app)
    for broken in group.broken.values():
        note(f"command plugin '{broken.name}' from {broken.package} failed to load: {broken.error}")
    return app


app = make_app()
