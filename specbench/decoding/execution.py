"""How the execution core runs models: eagerly or in static caches, one row or many per call.

:class:`Execution` holds a method's engine settings (the common fields every in-process
method has, :class:`specbench.methods.in_process.ExecutionParams`); :class:`EngineSessions`
turns them into caches: ordinary sessions (``eager``), sessions over a preallocated static
cache with CUDA graphs on a GPU (``static``), and batch sessions that score several rows in
one forward call. The core and every proposer take their caches from it, so a method never
chooses an executor itself and every proposer runs on every engine.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from specbench.models.base import BatchSession, LanguageModel, SequentialBatchSession, Session

Engine = Literal["eager", "static"]


@dataclass(frozen=True)
class Execution:
    """The engine a method's models run on.

    ``static``: each sequence in a preallocated cache (the smallest power of two that holds
    it, without graphs), fixed-length steps captured as CUDA graphs on a GPU when
    ``cuda_graphs``, and compiled with ``torch.compile`` when ``compile``.
    """

    engine: Engine = "eager"
    static_max_len: int = 4096
    cuda_graphs: bool = True
    compile: bool = False


EAGER = Execution()


class EngineSessions:
    """Caches for the models of one batch of generations, in the chosen engine.

    Every session it hands out is closed by :meth:`close` (the core calls it when the batch
    ends, also after an error), which returns static caches to their model's pool.
    """

    def __init__(self, execution: Execution = EAGER) -> None:
        self.execution = execution
        self._open: list[Session] = []

    def session(
        self,
        model: LanguageModel,
        positions: int,
        lengths: tuple[int, ...] = (),
    ) -> Session:
        """A fresh cache for one sequence of up to ``positions`` tokens; ``lengths``: the
        call sizes worth capturing as graphs (static engine on CUDA) or compiling."""
        execution = self.execution
        if execution.engine == "static":
            session = model.new_static_session(
                positions,
                max_len=execution.static_max_len,
                graph_lengths=lengths if execution.cuda_graphs or execution.compile else (),
                compile=execution.compile,
            )
        else:
            session = model.new_session()
        self._open.append(session)
        return session

    def rows(
        self,
        model: LanguageModel,
        size: int,
        positions: int,
        lengths: tuple[int, ...] = (),
        per_row: bool = False,
    ) -> BatchSession:
        """Caches for ``size`` sequences: one model call per step for all rows where the
        backend batches (eager engine, ``per_row`` unset), else one session per row."""
        if size == 1 or per_row or self.execution.engine == "static":
            sessions = [self.session(model, positions, lengths) for _ in range(size)]
            return SequentialBatchSession(model, size, sessions)
        return model.new_batch_session(size)

    def close(self) -> None:
        """Release every session handed out (static caches go back to their pool)."""
        open_sessions, self._open = self._open, []
        for session in open_sessions:
            session.close()
