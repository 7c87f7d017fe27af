"""``specbench run``: run a preset with a live table and stream records to JSONL."""

from __future__ import annotations

import shlex
import traceback
from pathlib import Path
from typing import Any

import typer

from specbench.cli.common import (
    EXIT_FAILURE,
    EXIT_INTERRUPTED,
    EXIT_INVALID_INPUT,
    console,
    err_console,
    fail,
    fail_with,
)
from specbench.cli.live import ProgressView
from specbench.cli.tables import noise_lines, summary_table
from specbench.errors import SpecbenchError
from specbench.plugins import discover_methods
from specbench.presets import (
    load_preset,
    parse_override,
    parse_sweep,
    select_methods,
    sweep_parameter,
)
from specbench.runner import RunAborted, run_preset


def run(
    preset: str = typer.Option(..., "--preset", "-p", help="Preset name or .toml path."),
    output: Path = typer.Option(None, "--output", "-o", help="Results JSONL file."),
    resume: bool = typer.Option(False, "--resume", help="Continue a results file, skip done."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="Print only the results path."),
    methods: str = typer.Option(None, "--methods", help="Comma-separated labels to run."),
    runs: int = typer.Option(None, "--runs", help="Timed runs per prompt (runs.count)."),
    warmup: int = typer.Option(None, "--warmup", help="Warm-up generations per method."),
    limit: int = typer.Option(None, "--limit", help="Use the first N prompts."),
    max_new_tokens: int = typer.Option(None, "--max-new-tokens", help="Tokens per generation."),
    temperature: float = typer.Option(None, "--temperature", help="0 is greedy."),
    top_k: int = typer.Option(None, "--top-k"),
    top_p: float = typer.Option(None, "--top-p"),
    seed: int = typer.Option(None, "--seed"),
    assignments: list[str] = typer.Option(
        None, "--set", help="Override any preset field: --set sampling.top_p=0.9 (repeatable)."
    ),
    sweeps: list[str] = typer.Option(
        None, "--sweep", help="One method copy per value: --sweep k=2,4,8 (repeatable)."
    ),
    thresholds: str = typer.Option(
        None, "--thresholds", help="AutoJudge sweep, same as --sweep threshold=a,b,c."
    ),
    train_judge: bool = typer.Option(
        False, "--train-judge", help="Train a missing judge on the spot instead of stopping."
    ),
    debug: bool = typer.Option(False, "--debug", help="Show tracebacks."),
) -> None:
    """Run every method of a preset on its prompts and write one JSONL record per sample."""
    flags: dict[str, Any] = {
        "runs.count": runs,
        "runs.warmup": warmup,
        "prompts.limit": limit,
        "sampling.max_new_tokens": max_new_tokens,
        "sampling.temperature": temperature,
        "sampling.top_k": top_k,
        "sampling.top_p": top_p,
        "sampling.seed": seed,
    }
    try:
        overrides = [parse_override(a) for a in assignments or []]
        overrides += [(key, value) for key, value in flags.items() if value is not None]
        resolved = load_preset(preset, discover_methods(), overrides)
        if methods:
            resolved = select_methods(resolved, [m.strip() for m in methods.split(",")])
        sweep_texts = list(sweeps or []) + ([f"threshold={thresholds}"] if thresholds else [])
        for text in sweep_texts:
            resolved = sweep_parameter(resolved, *parse_sweep(text))
    except SpecbenchError as error:
        fail_with(error, EXIT_INVALID_INPUT)

    if not quiet:
        for name, reason in resolved.skipped:
            console.print(
                f'note: methods = "all" skipped {name}: {reason}',
                highlight=False,
                markup=False,
                soft_wrap=True,
            )
    # Every flag that changed the preset, so the printed resume command reproduces it.
    replay = ["--preset", preset]
    for name, value in (
        ("--runs", runs),
        ("--warmup", warmup),
        ("--limit", limit),
        ("--max-new-tokens", max_new_tokens),
        ("--temperature", temperature),
        ("--top-k", top_k),
        ("--top-p", top_p),
        ("--seed", seed),
        ("--methods", methods),
        ("--thresholds", thresholds),
    ):
        if value is not None:
            replay += [name, str(value)]
    for assignment in assignments or []:
        replay += ["--set", assignment]
    for sweep in sweeps or []:
        replay += ["--sweep", sweep]
    if train_judge:
        replay.append("--train-judge")
    try:
        with ProgressView(console, quiet=quiet) as view:
            outcome = run_preset(
                resolved, output=output, resume=resume, on_progress=view, train_missing=train_judge
            )
    except SpecbenchError as error:
        fail_with(error, EXIT_INVALID_INPUT)
    except RunAborted as aborted:
        _report_abort(aborted, replay, debug)

    if quiet:
        console.print(str(outcome.output), highlight=False, markup=False)
        return
    console.print(summary_table(outcome.summaries, title=f"{resolved.name}: summary"))
    for line in noise_lines(outcome.summaries):
        console.print(f"note: {line}", highlight=False, markup=False, soft_wrap=True)
    if outcome.skipped:
        console.print(f"resumed: {outcome.skipped} samples were already in the file")
    console.print(f"results: {outcome.output}", highlight=False, markup=False)


def resume_command(replay: list[str], output: Path) -> str:
    """The shell command that continues an interrupted run with the same effective preset."""
    return shlex.join(["specbench", "run", *replay, "--output", str(output), "--resume"])


def _report_abort(aborted: RunAborted, replay: list[str], debug: bool) -> None:
    kept = f"{aborted.written} new records kept in {aborted.output}"
    again = resume_command(replay, aborted.output)
    if isinstance(aborted.cause, KeyboardInterrupt):
        err_console.print(f"interrupted during {aborted.where}; {kept}", highlight=False)
        err_console.print(f"continue with: {again}", highlight=False, markup=False, soft_wrap=True)
        raise typer.Exit(EXIT_INTERRUPTED)
    if debug:
        err_console.print("".join(traceback.format_exception(aborted.cause)), markup=False)
    cause = aborted.cause
    if isinstance(cause, SpecbenchError):
        fail(f"{aborted.where}: {cause}; {kept}", EXIT_FAILURE)
    hint = _hint_for(cause)
    fail(
        f"{aborted.where} failed: {type(cause).__name__}: {_first_line(cause)}; {kept}. "
        f"Fix: {hint}, then resume with `{again}`",
        EXIT_FAILURE,
    )


def _hint_for(error: BaseException) -> str:
    text = str(error).lower()
    if "out of memory" in text:
        return (
            "lower sampling.max_new_tokens, use a smaller dtype or quantization, or a smaller model"
        )
    return "rerun with --debug for the traceback"


def _first_line(error: BaseException) -> str:
    lines = str(error).strip().splitlines()
    return lines[0] if lines else ""
