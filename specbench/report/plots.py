"""PNG plots for ``specbench report`` (matplotlib, no display needed)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from specbench.errors import SpecbenchError
from specbench.install_hints import install_extra
from specbench.records import PHASES
from specbench.report.results import ResultsFile
from specbench.report.serving import load_curves


def _pyplot() -> Any:
    try:
        import matplotlib
    except ImportError as error:
        raise SpecbenchError(
            "plots need matplotlib, which is not installed", install_extra("report")
        ) from error
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def write_plots(results: Sequence[ResultsFile], out_dir: Path) -> list[Path]:
    """Speedup per method, per-position acceptance and, when outputs were scored, the
    speed / accuracy trade-off; returns the files written."""
    out_dir.mkdir(parents=True, exist_ok=True)
    written = [
        plot_speedup(results, out_dir / "speedup.png"),
        plot_acceptance(results, out_dir / "acceptance_by_position.png"),
    ]
    if any(s.score_mean is not None for r in results for s in r.summaries):
        written.append(plot_speed_accuracy(results, out_dir / "speed_accuracy.png"))
    if any(s.ms_per_token_by_phase for r in results for s in r.summaries):
        written.append(plot_costs(results, out_dir / "cost_by_phase.png"))
    if any(s.batch_size > 1 and s.serving is None for r in results for s in r.summaries):
        written.append(plot_latency_throughput(results, out_dir / "latency_throughput.png"))
    if any(s.serving is not None for r in results for s in r.summaries):
        written.append(plot_serving(results, out_dir / "serving_throughput_tpot.png"))
    return written


def plot_serving(results: Sequence[ResultsFile], path: Path) -> Path:
    """Output throughput against median TPOT over the load levels, one line per server
    configuration; an X marks the level at which speculation stops paying (its throughput
    no better than the plain server's at that level)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.5, 4.4))
    for result in results:
        for curve in load_curves(result.summaries):
            points = [(s, s.serving) for s in curve.points if s.serving and s.serving.tpot_ms]
            if not points:
                continue
            xs = [serving.tpot_ms["p50"] for _, serving in points]
            ys = [serving.output_tokens_per_s for _, serving in points]
            name = curve.name if len(results) == 1 else f"{curve.name} - {result.label}"
            (line,) = ax.plot(xs, ys, marker="o", label=name)
            for (_, serving), x, y in zip(points, xs, ys, strict=True):
                ax.annotate(f"c={serving.concurrency}", (x, y), fontsize=7, xytext=(4, 4),
                            textcoords="offset points")  # fmt: skip
                if serving.concurrency == curve.stops_paying:
                    ax.scatter([x], [y], marker="x", s=120, color=line.get_color(), zorder=3)
    ax.set_xlabel("median time per output token (ms)")
    ax.set_ylabel("output throughput (tokens / s)")
    ax.set_title("Serving: throughput vs TPOT over concurrency (X: speculation does not pay)")
    ax.legend(fontsize=8)
    return _save(plt, fig, path)


def plot_latency_throughput(results: Sequence[ResultsFile], path: Path) -> Path:
    """Per-sequence latency against total throughput, one curve per method over batch sizes."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.5, 4.4))
    for result in results:
        curves: dict[str, list[Any]] = {}
        for summary in result.summaries:
            base = summary.method.split("-batch_size=")[0]
            curves.setdefault(base, []).append(summary)
        for base, points in curves.items():
            ordered = sorted(points, key=lambda s: s.batch_size)
            xs = [s.throughput_tokens_per_sec for s in ordered]
            ys = [s.wall_s_median for s in ordered]
            name = base if len(results) == 1 else f"{base} - {result.label}"
            ax.plot(xs, ys, marker="o", label=name)
            for s, x, y in zip(ordered, xs, ys, strict=True):
                ax.annotate(
                    f"b={s.batch_size}",
                    (x, y),
                    fontsize=7,
                    xytext=(4, 4),
                    textcoords="offset points",
                )
    ax.set_xlabel("throughput (new tokens / s, all sequences)")
    ax.set_ylabel("median latency per sequence (s)")
    ax.set_title("Latency vs throughput over batch sizes")
    ax.legend(fontsize=8)
    return _save(plt, fig, path)


def plot_speed_accuracy(results: Sequence[ResultsFile], path: Path) -> Path:
    """Accuracy against speedup and against tokens per target call.

    Lossy methods of one kind (an AutoJudge threshold sweep) form a curve, labelled by their
    threshold; lossless methods are single points to compare the curve with.
    """
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.4), sharey=True)
    for result in results:
        scored = [s for s in result.summaries if s.score_mean is not None]
        curves: dict[str, list[Any]] = {}
        for summary in scored:
            if summary.exact:
                for ax, x in zip(axes, _speed_axes(summary), strict=True):
                    ax.scatter([x], [summary.score_mean], s=60, zorder=3)
                    ax.annotate(
                        summary.method,
                        (x, summary.score_mean),
                        fontsize=7,
                        xytext=(4, 4),
                        textcoords="offset points",
                    )
            else:
                curves.setdefault(summary.method_name, []).append(summary)
        for name, points in curves.items():
            for ax, axis in zip(axes, range(2), strict=True):
                ordered = sorted(points, key=lambda s: _speed_axes(s)[axis])
                xs = [_speed_axes(s)[axis] for s in ordered]
                ys = [s.score_mean for s in ordered]
                ax.plot(xs, ys, marker="o", label=name if axis == 0 else None)
                for s, x, y in zip(ordered, xs, ys, strict=True):
                    threshold = s.stats.get("threshold")
                    if threshold is not None:
                        ax.annotate(
                            f"t={threshold:g}",
                            (x, y),
                            fontsize=7,
                            xytext=(4, -10),
                            textcoords="offset points",
                        )
    axes[0].set_xlabel("speedup over baseline")
    axes[1].set_xlabel("tokens per target call")
    axes[0].set_ylabel("task score (accuracy / pass@1)")
    axes[0].set_ylim(-0.02, 1.02)
    axes[0].set_title("Speed vs quality")
    axes[1].set_title("Accepted tokens vs quality")
    if any(ax.get_legend_handles_labels()[0] for ax in axes):
        axes[0].legend(fontsize=8)
    return _save(plt, fig, path)


def _speed_axes(summary: Any) -> tuple[float, float]:
    return (summary.speedup or 0.0, summary.avg_tokens_per_step)


@dataclass(frozen=True)
class SpeedupBar:
    """One bar of the speedup plot: a method of one file, with its 95% interval if known."""

    file_index: int
    method: str
    x: float
    speedup: float
    low: float | None
    high: float | None


def speedup_bars(results: Sequence[ResultsFile]) -> tuple[list[str], list[SpeedupBar]]:
    """Method groups and their bars; a method a file does not have gets no bar (absent is
    absent, not 0.00x), and a method without a baseline to divide by gets none either."""
    labels: list[str] = []
    for result in results:
        labels += [_name(s) for s in result.summaries if _name(s) not in labels]
    width = 0.8 / max(len(results), 1)
    bars = []
    for i, result in enumerate(results):
        by_label = {_name(s): s for s in result.summaries}
        for x, label in enumerate(labels):
            summary = by_label.get(label)
            if summary is None or summary.speedup is None:
                continue
            low, high = summary.speedup_ci or (None, None)
            offset = (i - (len(results) - 1) / 2) * width
            bars.append(SpeedupBar(i, label, x + offset, summary.speedup, low, high))
    return labels, bars


def plot_speedup(results: Sequence[ResultsFile], path: Path) -> Path:
    """Grouped bars: one group per method label, one bar per results file, with the 95%
    bootstrap interval as an error bar; the legend sits outside the axes."""
    plt = _pyplot()
    labels, bars = speedup_bars(results)
    width = 0.8 / max(len(results), 1)
    fig, ax = plt.subplots(figsize=(max(6.0, 1.2 * len(labels) + 2), 4.2))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, result in enumerate(results):
        mine = [b for b in bars if b.file_index == i]
        if not mine:
            continue
        errors = [
            [b.speedup - b.low if b.low is not None else 0.0 for b in mine],
            [b.high - b.speedup if b.high is not None else 0.0 for b in mine],
        ]
        drawn = ax.bar(
            [b.x for b in mine],
            [b.speedup for b in mine],
            width,
            yerr=errors,
            capsize=3,
            label=result.label,
            color=colors[i % len(colors)],
        )
        ax.bar_label(drawn, labels=[f"{b.speedup:.2f}x" for b in mine], fontsize=8, padding=2)
    ax.axhline(1.0, color="grey", linewidth=0.8, linestyle="--")
    top = max([b.high or b.speedup for b in bars], default=1.0)
    ax.set_ylim(0, max(top, 1.0) * 1.15)
    ax.set_xticks(range(len(labels)), labels, rotation=20, ha="right")
    ax.set_ylabel("speedup over baseline (median tok/s ratio)")
    ax.set_title("Speedup per method (bars: 95% bootstrap interval)")
    if len(results) > 1:
        ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)
    return _save(plt, fig, path)


PHASE_COLORS = {"draft": "#4c72b0", "target": "#dd8452", "verify": "#55a868", "host": "#8c8c8c"}


def plot_costs(results: Sequence[ResultsFile], path: Path) -> Path:
    """One stacked bar per method: ms per generated token by phase (the cost ledger), with
    the predicted ms per token as a black tick; unknown phases are left out of the stack
    and named under the bar, and a method that measured no phase at all (an engine that
    reports none) gets a hatched bar of its whole time."""
    plt = _pyplot()
    bars = [
        (s.method if len(results) == 1 else f"{s.method}\n{result.label}", s)
        for result in results
        for s in result.summaries
        if s.ms_per_token_by_phase
    ]
    fig, ax = plt.subplots(figsize=(max(6.0, 1.1 * len(bars) + 2.5), 4.4))
    for name in PHASES:
        bottoms = [
            sum((s.ms_per_token_by_phase or {}).get(p) or 0.0 for p in PHASES[: PHASES.index(name)])
            for _, s in bars
        ]
        heights = [(s.ms_per_token_by_phase or {}).get(name) or 0.0 for _, s in bars]
        ax.bar(range(len(bars)), heights, 0.6, bottom=bottoms, label=name, color=PHASE_COLORS[name])
    unsplit = [
        (x, s.measured_ms_per_token or 0.0)
        for x, (_, s) in enumerate(bars)
        if all(v is None for v in (s.ms_per_token_by_phase or {}).values())
    ]
    if unsplit:
        positions = [x for x, _ in unsplit]
        totals = [total for _, total in unsplit]
        ax.bar(
            positions, totals, 0.6, fill=False, hatch="//", edgecolor="#8c8c8c", label="not split"
        )
    for x, (_, s) in enumerate(bars):
        if s.predicted_ms_per_token is not None:
            ax.plot([x - 0.35, x + 0.35], [s.predicted_ms_per_token] * 2, color="black", lw=1.5)
        unknown = [p for p, v in (s.ms_per_token_by_phase or {}).items() if v is None]
        total = s.measured_ms_per_token or 0.0
        if "host" in unknown:
            unknown = []  # nothing measured: the hatched bar says so
        note = f"{total:.1f}" + (f"\n({', '.join(unknown)} in host)" if unknown else "")
        ax.annotate(note, (x, total), ha="center", va="bottom", fontsize=7)
    ax.plot([], [], color="black", lw=1.5, label="predicted")
    ax.margins(y=0.15)  # room for the notes above the tallest bar
    ax.set_xticks(range(len(bars)), [label for label, _ in bars], rotation=20, ha="right")
    ax.set_ylabel("ms per generated token")
    ax.set_title("Where the time goes, by phase (tick: predicted from unit costs)")
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)
    return _save(plt, fig, path)


#: Positions reached fewer times than this are drawn hollow and grey: a rate from a handful
#: of draws (1.00 from 3 of 3) says little.
THIN_POSITION = 30


def plot_acceptance(results: Sequence[ResultsFile], path: Path) -> Path:
    """Acceptance at each draft position given the position was reached, per method, with
    a 95% Wilson interval and how often the position was reached (n) at every point."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    plotted = 0
    for result in results:
        for summary in result.summaries:
            samples = [s for s in result.samples if s.method == summary.method]
            counts = _position_counts(samples)
            points = [(i + 1, a, n) for i, (a, n) in enumerate(counts) if n > 0]
            if not points:
                continue
            name = summary.method if len(results) == 1 else f"{summary.method} - {result.label}"
            solid = [(x, a / n) for x, a, n in points if n >= THIN_POSITION]
            (line,) = ax.plot([x for x, _ in solid], [r for _, r in solid], label=name, lw=1.2)
            for x, accepted, n in points:
                low, high = _wilson(accepted, n)
                rate = accepted / n
                thin = n < THIN_POSITION
                colour = "0.65" if thin else line.get_color()
                below, above = max(0.0, rate - low), max(0.0, high - rate)  # rounding: >= 0
                ax.errorbar(x, rate, yerr=[[below], [above]], color=colour,
                            marker="o", markersize=5, capsize=2, linewidth=0.8,
                            markerfacecolor="white" if thin else colour)  # fmt: skip
                ax.annotate(f"n={n}", (x, high), textcoords="offset points", xytext=(0, 3),
                            ha="center", fontsize=6, color=colour)  # fmt: skip
            plotted += 1
    ax.set_xlabel(f"draft position (hollow grey: reached < {THIN_POSITION} times)")
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.set_ylabel("P(accepted | position reached)")
    ax.set_ylim(0, 1.1)
    ax.set_title("Per-position acceptance (bars: 95% Wilson interval)")
    if plotted:
        ax.legend(fontsize=8)
    else:
        ax.text(0.5, 0.5, "no speculative methods", ha="center", transform=ax.transAxes)
    return _save(plt, fig, path)


def _position_counts(samples: Sequence[Any]) -> list[tuple[int, int]]:
    """(accepted, reached) per draft position over ``samples``."""
    width = max((len(s.position_verified) for s in samples), default=0)
    return [
        (
            sum(s.position_accepted[i] for s in samples if i < len(s.position_accepted)),
            sum(s.position_verified[i] for s in samples if i < len(s.position_verified)),
        )
        for i in range(width)
    ]


def _wilson(successes: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """The Wilson score interval of a binomial rate (sound at 0 and 1, unlike +-2 sd)."""
    rate = successes / n
    centre = (rate + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(rate * (1 - rate) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def _name(summary: Any) -> str:
    """A method's label, marked when its acceptance was simulated."""
    return f"{summary.method} (synthetic)" if summary.synthetic else str(summary.method)


def _save(plt: Any, fig: Any, path: Path) -> Path:
    fig.tight_layout()
    # bbox "tight" keeps a legend placed outside the axes inside the image.
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)
    return path
