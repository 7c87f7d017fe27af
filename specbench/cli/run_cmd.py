"""``specbench run``: run a preset (or a study of several) with a live table, stream records to
JSONL, and optionally log them to experiment trackers."""

from __future__ import annotations

import functools
import shlex
import traceback
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import typer

from specbench.cli.common import (
    EXIT_FAILURE,
    EXIT_INTERRUPTED,
    EXIT_INVALID_INPUT,
    SET_HELP,
    console,
    err_console,
    fail,
    fail_with,
    flag_overrides,
    note,
    typed_arguments,
)
from specbench.cli.live import ProgressView
from specbench.cli.tables import summary_table
from specbench.errors import SpecbenchError
from specbench.models.loading import model_notes
from specbench.plugins import discover_methods
from specbench.presets.schema import (
    Override,
    ResolvedPreset,
    load_preset,
    parse_override,
    parse_sweep,
    select_methods,
    sweep_parameter,
)
from specbench.report.tables import noise_notes
from specbench.run.distributed import require_ray, run_distributed
from specbench.run.progress import Progress
from specbench.run.runner import RunAborted, RunOutcome, run_preset
from specbench.run.study import (
    Study,
    load_study,
    resolve_entries,
    run_study,
    study_dir,
    study_of_presets,
)
from specbench.tracking import TrackingSession, make_trackers


def run(
    ctx: typer.Context,
    preset: list[str] = typer.Option(
        None,
        "--preset",
        "-p",
        help="Preset name or path (.toml, .yaml or .json); repeat it for a study.",
    ),
    study: Path = typer.Option(None, "--study", help="A study file listing presets and sweeps."),
    output: Path = typer.Option(
        None, "--output", "-o", help="Results JSONL file (a study: its directory)."
    ),
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
        None,
        "--set",
        help=SET_HELP,
    ),
    sweeps: list[str] = typer.Option(
        None, "--sweep", help="One method copy per value: --sweep k=2,4,8 (repeatable)."
    ),
    concurrency: str = typer.Option(
        None,
        "--concurrency",
        help="Load levels for server methods, e.g. 1,4,16 (runs.concurrency): each runs "
        "once per level, that many requests in flight.",
    ),
    train: bool = typer.Option(
        False,
        "--train",
        help="Train what a method needs (a judge, heads) on the spot instead of stopping.",
    ),
    thresholds: str = typer.Option(None, "--thresholds", hidden=True),
    train_judge: bool = typer.Option(False, "--train-judge", hidden=True),
    track: list[str] = typer.Option(
        None, "--track", help="Log to an experiment tracker: mlflow or wandb (repeatable)."
    ),
    ray: str = typer.Option(
        None,
        "--ray",
        help="Run on Ray: 'local' (a cluster on this machine), 'auto' (the running one) or an "
        "address; shards and resources from the preset's \\[cluster] table.",
    ),
    debug: bool = typer.Option(False, "--debug", help="Show tracebacks."),
) -> None:
    """Run every method of a preset on its prompts and write one JSONL record per sample;
    several presets (-p A -p B, or --study FILE) run in order into one directory."""
    flags = flag_overrides(
        {
            "--runs": ("runs.count", runs),
            "--warmup": ("runs.warmup", warmup),
            "--limit": ("prompts.limit", limit),
            "--max-new-tokens": ("sampling.max_new_tokens", max_new_tokens),
            "--temperature": ("sampling.temperature", temperature),
            "--top-k": ("sampling.top_k", top_k),
            "--top-p": ("sampling.top_p", top_p),
            "--seed": ("sampling.seed", seed),
            "--concurrency": ("runs.concurrency", _levels(concurrency)),
        }
    )
    presets = list(preset or [])
    if not presets and study is None:
        fail("name a preset with --preset (or a study with --study)", EXIT_INVALID_INPUT)
    # The older spellings still work, each with a note naming the current one.
    if thresholds:
        note(f"--thresholds {thresholds} is --sweep threshold={thresholds}")
    if train_judge:
        note("--train-judge is --train (it trains judges and heads alike)")
    sweep_texts = list(sweeps or []) + ([f"threshold={thresholds}"] if thresholds else [])
    train = train or train_judge
    # Every flag that changed the preset, so the printed resume command reproduces it.
    replay = typed_arguments(ctx, skip={"output", "resume", "quiet", "debug"})

    try:
        overrides = [parse_override(a) for a in assignments or []] + flags
        trackers = make_trackers(track or [])
    except SpecbenchError as error:
        fail_with(error, EXIT_INVALID_INPUT)
    tracking = TrackingSession(trackers, warn=_warn)
    runner = run_preset
    if ray is not None:
        try:
            require_ray()
        except SpecbenchError as error:
            fail_with(error, EXIT_INVALID_INPUT)
        runner = functools.partial(run_distributed, address=ray)

    if study is not None or len(presets) > 1:
        _run_study(
            study, presets, overrides, methods, sweep_texts, output, resume, quiet, tracking,
            replay, debug, runner,
        )  # fmt: skip
        return

    try:
        resolved = load_preset(presets[0], discover_methods(), overrides)
        resolved = replace(_shape(resolved, methods, sweep_texts), arguments=tuple(replay))
    except SpecbenchError as error:
        fail_with(error, EXIT_INVALID_INPUT)
    _notes(resolved, quiet)
    outcome = _run_one(resolved, output, resume, quiet, train, tracking, replay, debug, runner)
    if quiet:
        console.print(str(outcome.output), highlight=False, markup=False)
    else:
        _print_outcome(resolved.name, outcome)
    _fail_on_failed(outcome, replay)


def _fail_on_failed(outcome: RunOutcome, replay: list[str]) -> None:
    """Failed samples (a server's errors) are in the file, marked failed: one line per kind
    of error, then exit 1 with the command that runs only them again."""
    if not outcome.failed:
        return
    kinds: dict[str, list[str]] = {}
    for sample in outcome.failed:
        kinds.setdefault(sample.error or "unknown error", []).append(
            f"{sample.method} on {sample.prompt_id}"
        )
    lines = [
        f"{len(where)} failed: {error} (first: {where[0]})"
        for error, where in list(kinds.items())[:5]
    ]
    command = resume_command(replay, outcome.output)
    lines.append(
        f"{len(outcome.failed)} samples failed and are recorded as failed in "
        f"{outcome.output}. Fix: once the cause is fixed, `{command}` runs only them again"
    )
    fail("\n".join(lines), EXIT_FAILURE)


def _levels(text: str | None) -> list[int] | None:
    """``--concurrency 1,4,16`` as levels; anything else is a one-line error (exit 2)."""
    if text is None:
        return None
    try:
        return [int(part) for part in text.split(",")]
    except ValueError:
        fail(
            f"--concurrency {text!r}: levels are whole numbers. Fix: write e.g. "
            "--concurrency 1,4,16",
            EXIT_INVALID_INPUT,
        )


def _shape(resolved: ResolvedPreset, methods: str | None, sweeps: list[str]) -> ResolvedPreset:
    if methods:
        resolved = select_methods(resolved, [m.strip() for m in methods.split(",")])
    for text in sweeps:
        resolved = sweep_parameter(resolved, *parse_sweep(text))
    return resolved


def _notes(resolved: ResolvedPreset, quiet: bool) -> None:
    if quiet:
        return
    for line in model_notes(resolved.preset.models):
        console.print(f"note: {line}", highlight=False, markup=False, soft_wrap=True)
    for name, reason in resolved.skipped:
        console.print(
            f'note: methods = "all" skipped {name}: {reason}',
            highlight=False,
            markup=False,
            soft_wrap=True,
        )


def _run_one(
    resolved: ResolvedPreset,
    output: Path | None,
    resume: bool,
    quiet: bool,
    train: bool,
    tracking: TrackingSession,
    replay: list[str],
    debug: bool,
    runner: Callable[..., RunOutcome],
) -> RunOutcome:
    extra = {"train_missing": train} if runner is run_preset else {}
    try:
        with ProgressView(console, quiet=quiet) as view:
            tracking.start(resolved)
            outcome = runner(
                resolved,
                output=output,
                resume=resume,
                on_progress=_render_and_track(view, tracking),
                **extra,
            )
    except SpecbenchError as error:
        tracking.finish(None, "failed")
        fail_with(error, EXIT_INVALID_INPUT)
    except RunAborted as aborted:
        tracking.finish(None, "interrupted", aborted.output)
        _report_abort(aborted, replay, debug)
    tracking.finish(outcome, "finished", outcome.output)
    return outcome


def _run_study(
    study_file: Path | None,
    presets: list[str],
    overrides: list[Override],
    methods: str | None,
    sweeps: list[str],
    output: Path | None,
    resume: bool,
    quiet: bool,
    tracking: TrackingSession,
    replay: list[str],
    debug: bool,
    runner: Callable[..., RunOutcome],
) -> None:
    try:
        spec: Study = (
            load_study(study_file) if study_file is not None else study_of_presets(presets)
        )
        entries = [
            (label, _shape(resolved, methods, sweeps))
            for label, resolved in resolve_entries(spec, discover_methods(), overrides)
        ]
        directory = study_dir(spec, output, resume)
    except SpecbenchError as error:
        fail_with(error, EXIT_INVALID_INPUT)
    if not quiet:
        console.print(
            f"study {spec.name}: {len(entries)} presets -> {directory}",
            highlight=False,
            markup=False,
        )

    def on_entry(position: int, label: str, file: Path) -> None:
        if not quiet:
            console.print(f"[{position + 1}/{len(entries)}] {label} -> {file}", highlight=False)
        tracking.start(dict(entries)[label])

    try:
        with ProgressView(console, quiet=quiet) as view:
            outcome = run_study(
                spec,
                entries,
                directory,
                resume,
                _render_and_track(view, tracking),
                on_entry,
                on_done=lambda label, done: tracking.finish(done, "finished", done.output),
                runner=runner,
            )
    except SpecbenchError as error:
        fail_with(error, EXIT_INVALID_INPUT)
    except RunAborted as aborted:
        tracking.finish(None, "interrupted", aborted.output)
        _report_abort(aborted, replay, debug, resume_output=directory)
    if quiet:
        console.print(str(outcome.directory), highlight=False, markup=False)
        return
    for label, result in outcome.outcomes:
        _print_outcome(label, result)
    console.print(
        f"study: {outcome.directory} (compare with: specbench report {outcome.directory})",
        highlight=False,
        markup=False,
    )


def _render_and_track(view: ProgressView, tracking: TrackingSession) -> Callable[[Progress], None]:
    """One progress callback: the live view and the trackers both hear every snapshot."""

    def on_progress(progress: Progress) -> None:
        view(progress)
        tracking.on_progress(progress)

    return on_progress


def _print_outcome(name: str, outcome: RunOutcome) -> None:
    console.print(summary_table(outcome.summaries, f"{name}: summary", console.width))
    for line in noise_notes(outcome.summaries):
        console.print(f"note: {line}", highlight=False, markup=False, soft_wrap=True)
    if outcome.skipped:
        console.print(f"resumed: {outcome.skipped} samples were already in the file")
    console.print(f"results: {outcome.output}", highlight=False, markup=False)


def _warn(message: str) -> None:
    err_console.print(f"warning: {message}", highlight=False, markup=False, soft_wrap=True)


def resume_command(replay: list[str], output: Path) -> str:
    """The shell command that continues an interrupted run with the same effective preset."""
    return shlex.join(["specbench", "run", *replay, "--output", str(output), "--resume"])


def _report_abort(
    aborted: RunAborted, replay: list[str], debug: bool, resume_output: Path | None = None
) -> None:
    kept = f"{aborted.written} new records kept in {aborted.output}"
    again = resume_command(replay, resume_output or aborted.output)
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
