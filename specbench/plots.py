"""PNG plots for ``specbench report`` (matplotlib, no display needed)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from specbench.errors import SpecbenchError
from specbench.report import ResultsFile


def _pyplot() -> Any:
    try:
        import matplotlib
    except ImportError as error:
        raise SpecbenchError(
            "plots need matplotlib, which is not installed", "pip install 'specbench[report]'"
        ) from error
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def write_plots(results: Sequence[ResultsFile], out_dir: Path) -> list[Path]:
    """Speedup per method and per-position acceptance; returns the files written."""
    out_dir.mkdir(parents=True, exist_ok=True)
    return [
        plot_speedup(results, out_dir / "speedup.png"),
        plot_acceptance(results, out_dir / "acceptance_by_position.png"),
    ]


def plot_speedup(results: Sequence[ResultsFile], path: Path) -> Path:
    """Grouped bars: one group per method label, one bar per results file."""
    plt = _pyplot()
    labels: list[str] = []
    for result in results:
        labels += [s.method for s in result.summaries if s.method not in labels]
    width = 0.8 / max(len(results), 1)
    fig, ax = plt.subplots(figsize=(max(6.0, 1.2 * len(labels) + 2), 4.2))
    for i, result in enumerate(results):
        by_label = {s.method: s for s in result.summaries}
        values = [
            (by_label[label].speedup or 0.0) if label in by_label else 0.0 for label in labels
        ]
        positions = [x + (i - (len(results) - 1) / 2) * width for x in range(len(labels))]
        bars = ax.bar(positions, values, width, label=result.label)
        ax.bar_label(bars, fmt="%.2fx", fontsize=8)
    ax.axhline(1.0, color="grey", linewidth=0.8, linestyle="--")
    ax.set_xticks(range(len(labels)), labels, rotation=20, ha="right")
    ax.set_ylabel("speedup over baseline (median tok/s ratio)")
    ax.set_title("Speedup per method")
    if len(results) > 1:
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def plot_acceptance(results: Sequence[ResultsFile], path: Path) -> Path:
    """Acceptance at each draft position given the position was reached, per method."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    plotted = 0
    for result in results:
        for summary in result.summaries:
            points = [
                (i + 1, v) for i, v in enumerate(summary.position_acceptance) if v is not None
            ]
            if not points:
                continue
            name = summary.method if len(results) == 1 else f"{summary.method} - {result.label}"
            ax.plot([p for p, _ in points], [v for _, v in points], marker="o", label=name)
            plotted += 1
    ax.set_xlabel("draft position")
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.set_ylabel("P(accepted | position reached)")
    ax.set_ylim(0, 1.02)
    ax.set_title("Per-position acceptance")
    if plotted:
        ax.legend(fontsize=8)
    else:
        ax.text(0.5, 0.5, "no speculative methods", ha="center", transform=ax.transAxes)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
