"""``specbench audit``: check that every exact method of a preset is lossless on its models."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

import typer
from rich.markup import escape
from rich.table import Table

from specbench.audit.run import AuditOptions, AuditOutcome, audit_preset
from specbench.cli.common import (
    EXIT_FAILURE,
    EXIT_INTERRUPTED,
    EXIT_INVALID_INPUT,
    SET_HELP,
    console,
    err_console,
    fail_with,
    resolve_preset,
)
from specbench.cli.live import MessageView
from specbench.errors import SpecbenchError
from specbench.presets.schema import select_methods
from specbench.run.output_paths import check_output_file


def audit(
    preset: str = typer.Option(
        ..., "--preset", "-p", help="Preset name or path (.toml, .yaml or .json)."
    ),
    methods: str = typer.Option(None, "--methods", help="Comma-separated labels to audit."),
    samples: int = typer.Option(
        2000, "--samples", min=10, help="Sampling: generations per prompt and method."
    ),
    tokens: int = typer.Option(
        None,
        "--tokens",
        min=1,
        help="Tokens per generation (default: 3 sampling, the preset's max_new_tokens greedy).",
    ),
    prompts: int = typer.Option(
        None, "--prompts", min=1, help="Prompts to audit on (default: 2 sampling, 5 greedy)."
    ),
    alpha: float = typer.Option(
        0.01, "--alpha", min=1e-9, max=0.5, help="Family-wise significance level (Bonferroni)."
    ),
    temperature: float = typer.Option(
        None, "--temperature", help="Override the preset's temperature (0: greedy audit)."
    ),
    top_k: int = typer.Option(None, "--top-k"),
    top_p: float = typer.Option(None, "--top-p"),
    tie_margin: float = typer.Option(
        None, "--tie-margin", help="Greedy: largest top-2 logit margin that counts as a near-tie."
    ),
    assignments: list[str] = typer.Option(
        None,
        "--set",
        help=SET_HELP,
    ),
    output: Path = typer.Option(None, "--output", "-o", help="Audit JSONL file."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="Print only the verdict table."),
) -> None:
    """Audit exact methods: sampled outputs against the target's exact distribution
    (chi-square), greedy outputs token for token against the baseline. Exit code 1 when an
    exact method fails."""
    flags = {
        "--temperature": ("sampling.temperature", temperature),
        "--top-k": ("sampling.top_k", top_k),
        "--top-p": ("sampling.top_p", top_p),
    }
    try:
        resolved = resolve_preset(preset, assignments, flags)
        chosen = [m.strip() for m in methods.split(",")] if methods else None
        if chosen:
            # As labels of the preset (a server's own label names its load levels).
            chosen = [m.label for m in select_methods(resolved, chosen).methods]
            # The baseline comes along: greedy verdicts and lossy divergence compare with it.
            labels = {m.label for m in resolved.methods}
            baseline = resolved.preset.runs.baseline
            extra = [baseline] if baseline in labels and baseline not in chosen else []
            resolved = select_methods(resolved, chosen + extra)
    except SpecbenchError as error:
        fail_with(error, EXIT_INVALID_INPUT)
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    path = output or Path("results") / f"{resolved.name}-audit-{stamp}.jsonl"
    try:
        check_output_file(
            path, "--output" if output else "the audit file (choose it with --output)"
        )
    except SpecbenchError as error:
        fail_with(error, EXIT_INVALID_INPUT)
    options = AuditOptions(
        samples=samples,
        tokens=tokens,
        prompts=prompts,
        alpha=alpha,
        tie_margin=tie_margin,
        methods=chosen,
    )
    try:
        with MessageView(console, quiet=quiet) as view:
            outcome = audit_preset(resolved, options, path, on_progress=view)
    except SpecbenchError as error:
        fail_with(error, EXIT_INVALID_INPUT)
    except KeyboardInterrupt:
        err_console.print("interrupted: the audit wrote nothing", highlight=False)
        raise typer.Exit(EXIT_INTERRUPTED) from None
    console.print(verdict_table(outcome, f"{resolved.name}: audit"))
    for group in outcome.identical:
        console.print(
            f"note: {', '.join(group)} drew identical samples (the same seeds and the same "
            "target draws), so their statistics are one test repeated, not independent "
            "evidence",
            highlight=False, markup=False, soft_wrap=True,
        )  # fmt: skip
    if not quiet:
        console.print(f"audit: {outcome.output}", highlight=False, markup=False)
    if outcome.failed:
        names = ", ".join(r.method for r in outcome.failed)
        err_console.print(f"[bold red]audit failed:[/] {escape(names)}", highlight=False)
        raise typer.Exit(EXIT_FAILURE)


def verdict_table(outcome: AuditOutcome, title: str) -> Table:
    """method, test, statistic, p-value, verdict (and why) for every audited method."""
    tested = (
        f"{outcome.prompts} prompts x {outcome.samples} samples, the first {outcome.tokens} "
        "tokens of each"
    )
    caption = (
        f"{outcome.tests} tests on {tested}; family-wise alpha with Bonferroni; bin counts "
        f"are in {outcome.output}"
        if outcome.mode == "sampling"
        else f"greedy, {outcome.prompts} prompts, {outcome.tokens} tokens each: token-for-token "
        "equality with the baseline; statistic = top-2 logit margin at the first difference"
    )
    table = Table(title=title, title_justify="left", caption=caption, caption_justify="left")
    for column in ("method", "test", "statistic", "p-value", "verdict", "detail"):
        table.add_column(column, overflow="fold", no_wrap=column in ("method", "statistic"))
    for r in outcome.records:
        statistic = "-" if r.statistic is None else f"{r.statistic:.3g}"
        if r.df is not None and r.statistic is not None:
            statistic += f" (df {r.df})"
        p_value = "-" if r.p_value is None else f"{r.p_value:.3g}"
        if r.alpha is not None:
            p_value += f" (< {r.alpha:.2g} fails)"
        colour = {"pass": "green", "fail": "red", "error": "red", "near-tie": "yellow"}.get(
            r.verdict, "cyan"
        )
        verdict = "lossy, not audited" if r.verdict == "lossy" else r.verdict
        table.add_row(
            r.method,
            r.test,
            statistic,
            p_value,
            f"[{colour}]{escape(verdict)}[/]",
            escape(r.detail),
        )
    return table
