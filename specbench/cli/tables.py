"""rich tables built from progress snapshots and summaries."""

from __future__ import annotations

from collections.abc import Sequence

from rich.table import Table

from specbench.progress import MethodProgress
from specbench.records import SummaryRecord


def fmt(value: float | None, spec: str = ".2f", suffix: str = "") -> str:
    return "-" if value is None else f"{value:{spec}}{suffix}"


def listing_table(
    title: str, columns: Sequence[str], names: Sequence[str], **options: object
) -> Table:
    """A table whose first column holds names a user types: never truncated or wrapped, even
    in a narrow terminal (the other columns fold instead)."""
    table = Table(title=title, title_justify="left", **options)  # type: ignore[arg-type]
    width = max([len(columns[0]), *(len(name) for name in names)])
    table.add_column(columns[0], no_wrap=True, min_width=width, style="bold")
    for column in columns[1:]:
        table.add_column(column, overflow="fold")
    return table


def speedup_cell(summary: SummaryRecord | None) -> str:
    """``1.47x [1.38-1.55]``: the speedup with its 95% bootstrap interval, when there is one."""
    if summary is None or summary.speedup is None:
        return "-"
    text = f"{summary.speedup:.2f}x"
    if summary.speedup_ci is not None:
        low, high = summary.speedup_ci
        text += f" [{low:.2f}-{high:.2f}]"
    return text


def noise_lines(summaries: Sequence[SummaryRecord]) -> list[str]:
    """One warning line per method and reason (machine load is said once)."""
    lines: list[str] = []
    for s in summaries:
        for note in s.noise:
            line = note if note.startswith("machine") else f"{s.method}: {note}"
            if line not in lines:
                lines.append(line)
    return lines


def progress_table(rows: Sequence[MethodProgress], title: str | None = None) -> Table:
    """The live table: one row per method."""
    table = Table(title=title, title_justify="left", expand=False)
    table.add_column("method", style="bold")
    table.add_column("progress", justify="right")
    table.add_column("tok/s", justify="right")
    table.add_column("speedup [95% CI]", justify="right")
    table.add_column("acceptance", justify="right")
    table.add_column("tokens/step", justify="right")
    show_score = any(r.summary and r.summary.score_mean is not None for r in rows)
    if show_score:
        table.add_column("score", justify="right")
    for row in rows:
        s = row.summary
        cells = [
            row.label,
            f"{row.done}/{row.total}",
            fmt(s.tokens_per_sec_median if s else None, ".1f"),
            speedup_cell(s),
            fmt(s.acceptance_rate if s else None, ".3f"),
            fmt(s.avg_tokens_per_step if s else None, ".2f"),
        ]
        if show_score:
            cells.append(_percent(s.score_mean if s else None))
        table.add_row(*cells)
    return table


def summary_table(summaries: Sequence[SummaryRecord], title: str | None = None) -> Table:
    """The final table of a run or a report: medians with their spread.

    tokens/call is pooled over all target calls (counts the bonus token); the profile table
    of ``report`` adds the per-request mean.
    """
    table = Table(title=title, title_justify="left")
    table.add_column("method", style="bold")
    table.add_column("exact")
    table.add_column("n", justify="right")
    table.add_column("tok/s (p25-p75)", justify="right")
    table.add_column("speedup [95% CI]", justify="right")
    table.add_column("accept (theory)", justify="right")
    table.add_column("tokens/call", justify="right")
    table.add_column("calls/token", justify="right")
    show_match = any(s.greedy_match_rate is not None for s in summaries)
    if show_match:
        table.add_column("= baseline", justify="right")
    show_score = any(s.score_mean is not None for s in summaries)
    if show_score:
        table.add_column("score", justify="right")
    for s in summaries:
        spread = (
            f"{s.tokens_per_sec_median:.1f} ({s.tokens_per_sec_p25:.1f}-{s.tokens_per_sec_p75:.1f})"
        )
        acceptance = fmt(s.acceptance_rate, ".3f")
        if s.expected_acceptance_rate is not None:
            acceptance += f" ({s.expected_acceptance_rate:.3f})"
        cells = [
            s.method,
            "synthetic" if s.synthetic else "yes" if s.exact else "lossy",
            str(s.samples),
            spread,
            speedup_cell(s),
            acceptance,
            fmt(s.avg_tokens_per_step, ".2f"),
            fmt(s.target_calls_per_token, ".3f"),
        ]
        if show_match:
            cells.append(_percent(s.greedy_match_rate))
        if show_score:
            cells.append(_percent(s.score_mean))
        table.add_row(*cells)
    return table


def _percent(value: float | None, suffix: str = "") -> str:
    return "-" if value is None else f"{100 * value:.0f}%{suffix}"
