"""The contents of every report table as plain data, rendered by the terminal (rich) and by the
HTML report alike, so both always show the same numbers formatted the same way."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from specbench.costs.phases import unit_key
from specbench.records import PHASES, SummaryRecord
from specbench.report.profile import consistency
from specbench.report.results import ResultsFile, batch_points, category_table
from specbench.report.serving import load_curves


@dataclass
class TableData:
    """A titled table of strings; ``numeric[i]`` right-aligns column ``i``."""

    title: str
    columns: list[str]
    rows: list[list[str]] = field(default_factory=list)
    numeric: list[bool] = field(default_factory=list)
    caption: str = ""
    key: str = ""  # a stable id (HTML anchors, tests)

    def __post_init__(self) -> None:
        if not self.numeric:
            self.numeric = [i > 0 for i in range(len(self.columns))]


def fmt(value: float | None, spec: str = ".2f", suffix: str = "") -> str:
    return "-" if value is None else f"{value:{spec}}{suffix}"


def percent(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.0f}%"


def speedup_text(summary: SummaryRecord | None) -> str:
    """``1.47x [1.38-1.55]``: the speedup with its 95% bootstrap interval, when there is one."""
    if summary is None or summary.speedup is None:
        return "-"
    text = f"{summary.speedup:.2f}x"
    if summary.speedup_ci is not None:
        low, high = summary.speedup_ci
        text += f" [{low:.2f}-{high:.2f}]"
    return text


def reference_text(summary: SummaryRecord) -> str:
    """``1.31x [1.2-1.4] vs llama`` over the method's own reference; ``-`` without one."""
    if summary.reference_speedup is None or summary.reference is None:
        return "-"
    if summary.reference == summary.method:
        return "reference"
    text = f"{summary.reference_speedup:.2f}x"
    if summary.reference_speedup_ci is not None:
        low, high = summary.reference_speedup_ci
        text += f" [{low:.2f}-{high:.2f}]"
    return f"{text} vs {summary.reference}"


def summary_data(summaries: Sequence[SummaryRecord], title: str = "", key: str = "") -> TableData:
    """Medians with their spread; tokens/call is pooled over all target calls (bonus counted)."""
    columns = [
        "method",
        "exact",
        "n",
        "tok/s (p25-p75)",
        "speedup [95% CI]",
        "accept (theory)",
        "tokens/call",
        "calls/token",
    ]
    show_match = any(s.greedy_match_rate is not None for s in summaries)
    show_score = any(s.score_mean is not None for s in summaries)
    # Engines: a speedup over their own plain decoding, and which engine ran each row.
    show_reference = any(s.reference not in (None, s.baseline) for s in summaries)
    show_engine = any(s.engine for s in summaries)
    columns += ["own speedup"] if show_reference else []
    columns += ["= baseline"] if show_match else []
    columns += ["score"] if show_score else []
    columns += ["engine"] if show_engine else []
    table = TableData(title, columns, key=key)
    table.numeric[1] = False
    for name in ("own speedup", "engine"):
        if name in columns:
            table.numeric[columns.index(name)] = False
    for s in summaries:
        acceptance = fmt(s.acceptance_rate, ".3f")
        if s.expected_acceptance_rate is not None:
            acceptance += f" ({s.expected_acceptance_rate:.3f})"
        row = [
            s.method,
            "synthetic" if s.synthetic else "yes" if s.exact else "lossy",
            str(s.samples),
            f"{s.tokens_per_sec_median:.1f} "
            f"({s.tokens_per_sec_p25:.1f}-{s.tokens_per_sec_p75:.1f})",
            speedup_text(s),
            acceptance,
            fmt(s.avg_tokens_per_step, ".2f"),
            fmt(s.target_calls_per_token, ".3f"),
        ]
        row += [reference_text(s)] if show_reference else []
        row += [percent(s.greedy_match_rate)] if show_match else []
        row += [percent(s.score_mean)] if show_score else []
        row += [s.engine or "specbench"] if show_engine else []
        table.rows.append(row)
    return table


def category_data(result: ResultsFile) -> TableData | None:
    data = category_table(result)
    if data is None:
        return None
    table = TableData(
        f"By category (speedup / tokens per target call): {result.label}",
        ["method", *data.columns],
        key="categories",
    )
    for method, cells in data.rows.items():
        row = [method]
        for column in data.columns:
            cell = cells.get(column)
            row.append(
                "-"
                if cell is None
                else f"{fmt(cell.speedup, '.2f', 'x')} / {cell.avg_tokens_per_step:.2f}"
            )
        table.rows.append(row)
    return table


def profile_data(result: ResultsFile) -> TableData | None:
    drafting = [s for s in result.summaries if s.position_marginal]
    if not drafting:
        return None
    table = TableData(
        f"Acceptance profile: {result.label}",
        [
            "method",
            "AL (per step)",
            "AL (per request)",
            "tokens/call (per step)",
            "tokens/call (per request)",
            "AL check",
            "conditional by position",
            "marginal by position",
        ],
        caption="AL = 1 + sum(marginal), per step; per-request = mean over samples. "
        "conditional = accepted at i / reached i; marginal = accepted at i / steps.",
        key="profile",
    )
    table.numeric[-1] = table.numeric[-2] = False
    for s in drafting:
        check = consistency(s)
        table.rows.append(
            [
                s.method,
                fmt(s.acceptance_length, ".3f"),
                fmt(s.acceptance_length_request_mean, ".3f"),
                f"{s.avg_tokens_per_step:.3f}",
                fmt(s.tokens_per_step_request_mean, ".3f"),
                ("ok" if check["passed"] else "off") + f" ({check['abs_delta']:.3f})",
                " ".join(fmt(v, ".2f") for v in s.position_acceptance),
                " ".join(f"{v:.2f}" for v in s.position_marginal),
            ]
        )
    return table


def batch_data(result: ResultsFile) -> TableData | None:
    points = batch_points(result)
    if not points:
        return None
    table = TableData(
        f"Latency vs throughput: {result.label}",
        ["method", "batch", "latency/seq (s)", "tok/s per seq", "throughput tok/s"],
        key="batch",
    )
    for p in points:
        table.rows.append(
            [
                p.method,
                str(p.batch_size),
                f"{p.latency_s:.2f}",
                f"{p.tokens_per_sec_per_sequence:.1f}",
                f"{p.throughput_tokens_per_sec:.1f}",
            ]
        )
    return table


def serving_data(result: ResultsFile) -> TableData | None:
    """Server methods per load level: throughput, latency percentiles, the server's
    acceptance, and the throughput against the plain server at the same level."""
    curves = load_curves(result.summaries)
    if not curves:
        return None
    table = TableData(
        f"Serving under load: {result.label}",
        [
            "method",
            "level",
            "ok/failed",
            "out tok/s",
            "req/s",
            "TTFT p50/p99 ms",
            "TPOT p50/p90/p99 ms",
            "ITL p50/p99 ms",
            "E2E p50 ms",
            "accept",
            "accept len",
            "per position (marginal)",
            "vs plain",
        ],
        key="serving",
    )
    notes = []
    for curve in curves:
        for summary, gain in zip(curve.points, curve.gains, strict=True):
            serving = summary.serving
            assert serving is not None
            level = f"c={serving.concurrency}"
            if serving.request_rate is not None:
                level += f" {serving.request_rate:g} req/s"
            table.rows.append(
                [
                    summary.method,
                    level,
                    f"{serving.requests}/{serving.failed_requests}",
                    f"{serving.output_tokens_per_s:.1f}",
                    f"{serving.requests_per_s:.2f}",
                    _percentiles(serving.ttft_ms, ("p50", "p99")),
                    _percentiles(serving.tpot_ms, ("p50", "p90", "p99")),
                    _percentiles(serving.itl_ms, ("p50", "p99")),
                    _percentiles(serving.e2e_ms, ("p50",)),
                    fmt(serving.acceptance_rate, ".3f"),
                    fmt(serving.acceptance_length, ".2f"),
                    " ".join(f"{v:.2f}" for v in serving.position_marginal) or "-",
                    "-" if gain is None else f"{gain:.2f}x",
                ]
            )
        if curve.verdict():
            notes.append(curve.verdict())
    table.caption = (
        "Per-position acceptance is marginal (accepted at i / drafts; acceptance length = 1 + "
        "its sum), from the server's /metrics over each level. vs plain: output throughput "
        "over the plain server's at the same level. " + "; ".join(notes) + ("." if notes else "")
    ).strip()
    return table


def _percentiles(values: dict[str, float], keys: Sequence[str]) -> str:
    if not values:
        return "-"
    return "/".join(fmt(values.get(key), ".0f") for key in keys)


def cost_data(result: ResultsFile) -> TableData | None:
    """The cost ledger: ms per generated token by phase, measured against predicted."""
    rows = [s for s in result.summaries if s.ms_per_token_by_phase is not None]
    if not rows:
        return None
    table = TableData(
        f"Where the time goes (ms per token): {result.label}",
        ["method", *PHASES, "measured", "predicted", "measured/predicted", "gap in"],
        key="costs",
        caption="Phases sum to measured; '-' is a phase the method cannot measure (host then "
        "includes it). Predicted: the method's forwards at the run's unit costs, with free "
        "verification and host work" + _level_note(rows) + ".",
    )
    table.numeric[-1] = False
    for s in rows:
        phases = s.ms_per_token_by_phase or {}
        ratio = (
            s.measured_ms_per_token / s.predicted_ms_per_token
            if s.measured_ms_per_token and s.predicted_ms_per_token
            else None
        )
        table.rows.append(
            [
                s.method,
                *(fmt(phases.get(name)) for name in PHASES),
                fmt(s.measured_ms_per_token),
                fmt(s.predicted_ms_per_token),
                fmt(ratio, ".2f", "x"),
                s.cost_gap_phase or "-",
            ]
        )
    return table


def async_data(result: ResultsFile) -> TableData | None:
    """Asynchronous speculation (SSD): the speculation cache and where the draft's time went,
    with the hit rate each fan-out of the sweep would have had."""
    rows = [s for s in result.summaries if any(k.startswith("ssd_") for k in s.stats)]
    if not rows:
        return None
    prefix = "ssd_cf_hit_rate_f"
    names = {k.removeprefix(prefix) for s in rows for k in s.stats if k.startswith(prefix)}
    # Uniform fan-outs in numeric order, then schedules by position.
    sweep = sorted(
        names, key=lambda name: (not name.isdigit(), int(name) if name.isdigit() else 0, name)
    )
    table = TableData(
        f"Async speculation: {result.label}",
        [
            "method",
            "hit rate",
            "tokens/round hit",
            "tokens/round miss",
            "wait ms/round",
            "draft busy ms/round",
            "draft idle ms/round",
            "overlapped draft ms/token",
            *(f"hit rate F={f}" for f in sweep),
        ],
        key="async",
        caption="hit rate: rounds whose drafts came from the speculation cache (the first "
        "round excluded); wait: the target's wait for drafts; overlapped: draft work done "
        "in the worker while the target worked, not part of the measured time; hit rate "
        "F=n: the share of outcomes among the top n candidates of their glue row (what "
        "that fan-out would hit).",
    )
    for s in rows:
        stats = s.stats
        table.rows.append(
            [
                s.method,
                fmt(stats.get("ssd_hit_rate"), ".3f"),
                fmt(stats.get("ssd_tokens_per_round_hit")),
                fmt(stats.get("ssd_tokens_per_round_miss")),
                fmt(stats.get("ssd_draft_wait_ms")),
                fmt(stats.get("ssd_draft_busy_ms")),
                fmt(stats.get("ssd_draft_idle_ms")),
                fmt(_overlapped_ms_per_token(result, s.method)),
                *(fmt(stats.get(f"ssd_cf_hit_rate_f{f}"), ".3f") for f in sweep),
            ]
        )
    return table


def _overlapped_ms_per_token(result: ResultsFile, method: str) -> float | None:
    units: dict[str, float] = {}
    tokens = 0
    for sample in result.samples:
        if sample.method != method or sample.costs is None:
            continue
        tokens += sample.new_tokens
        if sample.costs.overlapped_draft_s is not None:
            # A batch's samples share one ledger: count each unit once.
            units[unit_key(sample)] = sample.costs.overlapped_draft_s
    if not units or not tokens:
        return None
    return 1000 * sum(units.values()) / tokens


def _level_note(rows: Sequence[SummaryRecord]) -> str:
    level = next((s.cost_level for s in rows if s.cost_level is not None), None)
    if level is None:
        return ""
    return (
        ", priced unit by unit at the machine's speed then (forwards timed right after each "
        "unit, or the baseline's steps on the same prompt in older files): "
        f"{level:.2f}x the run's first probe, median"
    )


def comparison_data(results: Sequence[ResultsFile]) -> TableData:
    table = TableData(
        "All files",
        ["file", "method", "tok/s", "speedup [95% CI]", "acceptance", "tokens/call"],
        key="comparison",
    )
    table.numeric[1] = False
    for result in results:
        for s in result.summaries:
            table.rows.append(
                [
                    result.label,
                    s.method,
                    f"{s.tokens_per_sec_median:.1f}",
                    speedup_text(s),
                    fmt(s.acceptance_rate, ".3f"),
                    f"{s.avg_tokens_per_step:.2f}",
                ]
            )
    return table


def noise_notes(summaries: Sequence[SummaryRecord]) -> list[str]:
    """One warning line per method and reason (machine load is said once)."""
    lines: list[str] = []
    for s in summaries:
        if s.failed:
            lines.append(
                f"{s.method}: {s.failed} samples failed and are in no figure (their error is "
                "in the file; --resume runs them again)"
            )
        for note in s.noise:
            line = note if note.startswith("machine") else f"{s.method}: {note}"
            if line not in lines:
                lines.append(line)
    return lines


def file_tables(result: ResultsFile) -> list[TableData]:
    """Every table of one file, in report order."""
    tables = [summary_data(result.summaries, result.label, key="summary")]
    extra = (
        cost_data(result),
        profile_data(result),
        async_data(result),
        category_data(result),
        batch_data(result),
        serving_data(result),
    )
    tables += [t for t in extra if t]
    return tables
