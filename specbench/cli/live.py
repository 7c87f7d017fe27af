"""Render run progress: a rich live table on a terminal, plain lines otherwise.

Piped output must never go quiet for minutes (a model load or a long warm-up): a heartbeat
thread prints a line whenever nothing was printed for ``HEARTBEAT_S`` seconds.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from types import TracebackType

from rich.console import Console
from rich.live import Live
from rich.status import Status

from specbench.cli.tables import progress_table
from specbench.report.tables import fmt, speedup_text
from specbench.run.progress import Progress

HEARTBEAT_S = 30.0


class _Heartbeat:
    """Prints ``describe()`` when nothing was printed for ``interval`` seconds."""

    def __init__(self, console: Console, describe: Callable[[float], str], interval: float) -> None:
        self.console = console
        self.describe = describe
        self.interval = interval
        self.started = time.monotonic()
        self.last_print = self.started
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="specbench-heartbeat", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=2)

    def printed(self) -> None:
        self.last_print = time.monotonic()

    def _loop(self) -> None:
        while not self._stop.wait(min(1.0, self.interval / 4)):
            now = time.monotonic()
            if now - self.last_print >= self.interval:
                self.console.print(self.describe(now - self.started), highlight=False, markup=False)
                self.last_print = now


def elapsed_text(seconds: float) -> str:
    minutes, secs = divmod(int(seconds), 60)
    return f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"


class ProgressView:
    """A progress callback for :func:`specbench.run.runner.run_preset`; a context manager."""

    def __init__(self, console: Console, quiet: bool = False) -> None:
        self.console = console
        self.quiet = quiet
        self.interactive = console.is_terminal and not quiet
        self._live: Live | None = None
        self._last_message = ""
        self._latest: Progress | None = None
        self._heartbeat: _Heartbeat | None = None

    def __enter__(self) -> ProgressView:
        if self.interactive:
            self._live = Live(console=self.console, refresh_per_second=8, transient=False)
            self._live.__enter__()
        elif not self.quiet:
            self._heartbeat = _Heartbeat(self.console, self._still, HEARTBEAT_S)
            self._heartbeat.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._heartbeat is not None:
            self._heartbeat.stop()
            self._heartbeat = None
        if self._live is not None:
            self._live.__exit__(exc_type, exc, tb)
            self._live = None

    def __call__(self, progress: Progress) -> None:
        self._latest = progress
        if self.quiet:
            return
        if self._live is not None:
            title = f"{progress.message}  [{progress.done}/{progress.total}]  -> {progress.output}"
            self._live.update(progress_table(progress.methods, title=title))
            return
        self._plain(progress)

    def _still(self, elapsed: float) -> str:
        progress = self._latest
        if progress is None:
            return f"still starting ({elapsed_text(elapsed)} elapsed)"
        tokens = progress.processed() if progress.processed is not None else None
        so_far = "" if tokens is None else f", {tokens} tokens processed so far"
        return (
            f"still {progress.message} ({elapsed_text(elapsed)} elapsed, "
            f"{progress.done}/{progress.total} samples done{so_far})"
        )

    def _print(self, text: str) -> None:
        self.console.print(text, highlight=False, markup=False, soft_wrap=True)
        if self._heartbeat is not None:
            self._heartbeat.printed()

    def _plain(self, progress: Progress) -> None:
        sample = progress.last
        if sample is None:
            if progress.message != self._last_message and progress.phase != "done":
                self._print(progress.message)
                self._last_message = progress.message
            return
        row = next(m for m in progress.methods if m.label == sample.method)
        if sample.error is not None:
            self._print(
                f"[{progress.done}/{progress.total}] {sample.method} prompt={sample.prompt_id} "
                f"run={sample.run}: failed: {sample.error}"
            )
            return
        self._print(
            f"[{progress.done}/{progress.total}] {sample.method} prompt={sample.prompt_id} "
            f"run={sample.run}: {sample.new_tokens} tokens, {sample.tokens_per_sec:.1f} tok/s, "
            f"acceptance {fmt(sample.acceptance_rate, '.3f')}, "
            f"{sample.avg_tokens_per_step:.2f} tokens/step, "
            f"speedup so far {speedup_text(row.summary)}"
        )


class MessageView:
    """A callback for one-line progress messages (``audit``): a spinner on a terminal, plain
    lines otherwise (at most one every few seconds, and a heartbeat)."""

    def __init__(self, console: Console, quiet: bool = False, every_s: float = 5.0) -> None:
        self.console = console
        self.quiet = quiet
        self.every_s = every_s
        self._status: Status | None = None
        self._heartbeat: _Heartbeat | None = None
        self._message = "starting"
        self._printed_at = 0.0

    def __enter__(self) -> MessageView:
        if self.quiet:
            return self
        if self.console.is_terminal:
            self._status = self.console.status(self._message)
            self._status.__enter__()
        else:
            self._heartbeat = _Heartbeat(
                self.console,
                lambda elapsed: f"still {self._message} ({elapsed_text(elapsed)} elapsed)",
                HEARTBEAT_S,
            )
            self._heartbeat.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._heartbeat is not None:
            self._heartbeat.stop()
        if self._status is not None:
            self._status.__exit__(None, None, None)

    def __call__(self, message: str) -> None:
        self._message = message
        if self.quiet:
            return
        if self._status is not None:
            self._status.update(message)
            return
        now = time.monotonic()
        if now - self._printed_at >= self.every_s:
            self.console.print(message, highlight=False, markup=False, soft_wrap=True)
            self._printed_at = now
            if self._heartbeat is not None:
                self._heartbeat.printed()
