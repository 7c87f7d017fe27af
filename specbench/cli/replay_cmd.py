"""``specbench replay``: a draft-free method's acceptance on a greedy run's saved outputs."""

from __future__ import annotations

import itertools
from pathlib import Path

import typer
from pydantic import ValidationError
from rich.table import Table

from specbench.cli.common import EXIT_INVALID_INPUT, console, fail, fail_with
from specbench.cli.tables import listing_table
from specbench.errors import SpecbenchError
from specbench.plugins import MethodParams, discover_methods
from specbench.presets.schema import parse_override, parse_sweep
from specbench.report.tables import fmt
from specbench.run.replay import ReplayResult, load_source, replay


def replay_command(
    results: Path = typer.Argument(..., help="A greedy results JSONL file with saved tokens."),
    method: str = typer.Option(..., "--method", "-m", help="Draft-free method to replay."),
    assignments: list[str] = typer.Option(
        None, "--set", help="A method parameter: --set max_spec_factor=2 (repeatable)."
    ),
    sweeps: list[str] = typer.Option(
        None, "--sweep", help="One configuration per value: --sweep min_token_prob=0.05,0.1."
    ),
    source: str = typer.Option(
        None, "--from", help="Whose outputs to replay (a label; default: the baseline)."
    ),
) -> None:
    """Replay saved greedy outputs through a draft-free drafter: the acceptance a greedy run
    of it would have had, in seconds, without running any model."""
    try:
        info = discover_methods().get(method)
        loaded = load_source(results, source)
    except SpecbenchError as error:
        fail_with(error, EXIT_INVALID_INPUT)
    base = {o.key: o.value for o in (parse_override(a) for a in assignments or [])}
    grid = [parse_sweep(text) for text in sweeps or []]
    configurations: list[tuple[str, MethodParams]] = []
    for values in itertools.product(*[v for _, v in grid]) if grid else [()]:
        params = {**base, **{name: value for (name, _), value in zip(grid, values, strict=True)}}
        label = ", ".join(f"{k}={v}" for k, v in params.items()) or "defaults"
        try:
            configurations.append((label, info.cls.Params(**params)))
        except ValidationError as error:
            first = error.errors()[0]
            where = ".".join(str(part) for part in first["loc"])
            fail(f"{method} parameter {where}: {first['msg']}", EXIT_INVALID_INPUT)
    try:
        outcomes = replay(loaded, info, configurations)
    except SpecbenchError as error:
        fail_with(error, EXIT_INVALID_INPUT)
    console.print(_table(outcomes, f"replay of {method} on {results.name}"))
    if loaded.skipped:
        console.print(
            f"note: {loaded.skipped} samples skipped (multi-turn, or no saved tokens)",
            highlight=False,
            markup=False,
        )


def _table(outcomes: list[ReplayResult], title: str) -> Table:
    table = listing_table(
        title,
        (
            "configuration",
            "samples",
            "tokens/call",
            "accepted/step",
            "target calls",
            "acceptance by position",
        ),
        [o.label for o in outcomes],
        caption="tokens/call counts the bonus token; a greedy run of the same method on the "
        "same outputs gets exactly these figures.",
        caption_justify="left",
    )
    for o in outcomes:
        table.add_row(
            o.label,
            str(len(o.samples)),
            f"{o.tokens_per_call:.3f}",
            f"{o.accepted_per_step:.3f}",
            str(o.total("target_calls")),
            " ".join(fmt(v, ".2f") for v in o.position_acceptance()[:8]),
        )
    return table
