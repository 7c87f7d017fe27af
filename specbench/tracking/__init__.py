"""Experiment tracking: each run's preset as parameters, every sample's metrics as steps, each
method's summary, and the JSONL and plots as artifacts.

Trackers are plugins in the ``specbench.trackers`` entry-point group (``mlflow`` and
``wandb`` are built in, each behind its extra). A tracker that fails never stops or corrupts a
run: :class:`TrackingSession` prints one warning line and turns that tracker off.
"""

from __future__ import annotations

import functools
import tempfile
from abc import ABC, abstractmethod
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar

from specbench.entry_points import LoadedGroup, load_entry_points
from specbench.errors import SpecbenchError
from specbench.install_hints import install_extra
from specbench.presets.schema import flatten_preset
from specbench.records import SampleRecord, SummaryRecord

if TYPE_CHECKING:
    from specbench.presets.schema import ResolvedPreset
    from specbench.run.progress import Progress
    from specbench.run.runner import RunOutcome

ENTRY_POINT_GROUP = "specbench.trackers"

SAMPLE_METRICS = ("tokens_per_sec", "wall_s", "acceptance_rate", "avg_tokens_per_step", "score")
SUMMARY_METRICS = (
    "tokens_per_sec_median",
    "speedup",
    "acceptance_rate",
    "avg_tokens_per_step",
    "acceptance_length",
    "greedy_match_rate",
    "score_mean",
    "throughput_tokens_per_sec",
)


class Tracker(ABC):
    """One experiment tracker. ``extra`` names the specbench extra that installs it."""

    name: ClassVar[str] = ""
    extra: ClassVar[str] = ""

    @abstractmethod
    def start(self, run_name: str, params: dict[str, str], tags: dict[str, str]) -> None:
        """Open a run."""

    @abstractmethod
    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        """Per-sample metrics at ``step`` (the sample's index in the run)."""

    @abstractmethod
    def log_summary(self, metrics: dict[str, float]) -> None:
        """Final per-method figures."""

    @abstractmethod
    def log_artifact(self, path: Path) -> None:
        """Attach a file (the JSONL, a plot)."""

    @abstractmethod
    def finish(self, status: str) -> None:
        """Close the run (``finished``, ``interrupted`` or ``failed``); return only once
        everything logged is stored, so a reader in the same process sees the whole run."""


def available_trackers() -> LoadedGroup[Tracker]:
    """Every tracker registered under ``specbench.trackers``."""
    return load_entry_points(ENTRY_POINT_GROUP, Tracker)


def make_trackers(names: Sequence[str]) -> list[Tracker]:
    """Trackers by name; a missing library is a one-line error naming the extra."""
    found = available_trackers()
    trackers = []
    for name in names:
        if name in found.broken:
            raise SpecbenchError(
                f"tracker '{name}' failed to load: {found.broken[name].error}",
                f"reinstall or fix {found.broken[name].package}",
            )
        if name not in found.loaded:
            known = ", ".join(sorted(found.loaded)) or "none"
            raise SpecbenchError(
                f"no tracker named '{name}' (installed: {known})", "use one of those"
            )
        cls = found.loaded[name].cls
        try:
            trackers.append(cls())
        except ImportError as error:
            raise SpecbenchError(
                f"tracker '{name}' needs {error.name}, which is not installed",
                install_extra(getattr(cls, "extra", "") or "track"),
            ) from error
    return trackers


def sample_metrics(sample: SampleRecord) -> dict[str, float]:
    return {
        f"{sample.method}/{name}": float(value)
        for name in SAMPLE_METRICS
        if (value := getattr(sample, name)) is not None
    }


def summary_metrics(summaries: Sequence[SummaryRecord]) -> dict[str, float]:
    return {
        f"{s.method}/{name}": float(value)
        for s in summaries
        for name in SUMMARY_METRICS
        if (value := getattr(s, name)) is not None
    }


class TrackingSession:
    """Feeds a run to every tracker; a failing tracker is warned about once and dropped."""

    def __init__(self, trackers: Sequence[Tracker], warn: Callable[[str], None]) -> None:
        self.trackers = list(trackers)
        self.warn = warn
        self._open = False
        self._steps: Counter[str] = Counter()

    def _each(self, action: str, call: Callable[[Tracker], None]) -> None:
        for tracker in list(self.trackers):
            try:
                call(tracker)
            except Exception as error:  # a tracker must never stop a run
                self.trackers.remove(tracker)
                self.warn(
                    f"{tracker.name} tracking stopped ({action} failed: "
                    f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}); "
                    "the run goes on"
                )

    def start(self, resolved: ResolvedPreset) -> None:
        if self._open:
            self.finish(None, "finished")
        params = flatten_preset(resolved.effective())
        tags = {"preset": resolved.name, "preset_hash": resolved.hash, "tool": "specbench"}
        self._steps = Counter()
        self._each("start", lambda t: t.start(resolved.name, params, tags))
        self._open = True

    def on_progress(self, progress: Progress) -> None:
        if not self._open or progress.last is None:
            return
        sample = progress.last
        step = self._steps[sample.method]
        self._steps[sample.method] += 1
        self._each("log", lambda t: t.log_metrics(sample_metrics(sample), step))

    def finish(self, outcome: RunOutcome | None, status: str, output: Path | None = None) -> None:
        if not self._open:
            return
        self._open = False
        if outcome is not None:
            metrics = summary_metrics(outcome.summaries)
            self._each("summary", lambda t: t.log_summary(metrics))
        if output is not None and output.exists():
            self._each("artifact", lambda t: t.log_artifact(output))
            for plot in _plots(output):
                self._each("artifact", functools.partial(_log_artifact, path=plot))
        self._each("finish", lambda t: t.finish(status))


def _plots(output: Path) -> list[Path]:
    """The report's PNG plots of ``output`` (nothing when matplotlib is missing)."""
    try:
        from specbench.report.plots import write_plots
        from specbench.report.results import load_results

        folder = Path(tempfile.mkdtemp(prefix="specbench-plots-"))
        return write_plots([load_results(output)], folder)
    except (SpecbenchError, ImportError):
        return []


def _log_artifact(tracker: Tracker, path: Path) -> None:
    tracker.log_artifact(path)
