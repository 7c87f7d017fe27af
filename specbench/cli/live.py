"""Render run progress: a rich live table on a terminal, plain lines otherwise."""

from __future__ import annotations

from types import TracebackType

from rich.console import Console
from rich.live import Live

from specbench.cli.tables import fmt, progress_table
from specbench.progress import Progress


class ProgressView:
    """A progress callback for :func:`specbench.runner.run_preset`, usable as a context manager."""

    def __init__(self, console: Console, quiet: bool = False) -> None:
        self.console = console
        self.quiet = quiet
        self.interactive = console.is_terminal and not quiet
        self._live: Live | None = None
        self._last_message = ""

    def __enter__(self) -> ProgressView:
        if self.interactive:
            self._live = Live(console=self.console, refresh_per_second=8, transient=False)
            self._live.__enter__()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._live is not None:
            self._live.__exit__(exc_type, exc, tb)
            self._live = None

    def __call__(self, progress: Progress) -> None:
        if self.quiet:
            return
        if self._live is not None:
            title = f"{progress.message}  [{progress.done}/{progress.total}]  -> {progress.output}"
            self._live.update(progress_table(progress.methods, title=title))
            return
        self._plain(progress)

    def _plain(self, progress: Progress) -> None:
        sample = progress.last
        if sample is None:
            if progress.message != self._last_message and progress.phase != "done":
                self.console.print(progress.message, highlight=False)
                self._last_message = progress.message
            return
        row = next(m for m in progress.methods if m.label == sample.method)
        speedup = row.summary.speedup if row.summary else None
        self.console.print(
            f"[{progress.done}/{progress.total}] {sample.method} prompt={sample.prompt_id} "
            f"run={sample.run}: {sample.new_tokens} tokens, {sample.tokens_per_sec:.1f} tok/s, "
            f"acceptance {fmt(sample.acceptance_rate, '.3f')}, "
            f"{sample.avg_tokens_per_step:.2f} tokens/step, "
            f"speedup so far {fmt(speedup, '.2f', 'x')}",
            highlight=False,
            markup=False,
            soft_wrap=True,
        )
