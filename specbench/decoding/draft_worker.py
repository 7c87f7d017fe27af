"""The SSD draft side in its own process, speculating while the target verifies.

:class:`WorkerDraftSide` starts a worker (``spawn``: a fresh interpreter, its own torch
threads, on a CPU pinned to its own cores, on CUDA its own device) that loads the draft
from its spec (or receives a small in-memory model) and serves
:class:`~specbench.decoding.ssd.SpeculationDrafter` over a pipe. Per round the decoding
process sends the outcome key and waits for the drafts; the worker answers at once and
then speculates on the round's outcome, which overlaps the target's verification.

Lifecycle: :meth:`WorkerDraftSide.close` (the method's ``close``, also after an error or
Ctrl-C) asks the worker to stop, then terminates it; the worker ignores Ctrl-C (the
decoding process decides), exits when its parent dies (the pipe closes or it is
re-parented) and reports its own errors as one line. A worker that dies is named with its
exit code, never taken for a slow one.
"""

from __future__ import annotations

import os
import signal
import time
import traceback
import weakref
from collections.abc import Sequence
from contextlib import suppress
from dataclasses import dataclass
from multiprocessing import get_context
from multiprocessing.connection import Connection, wait
from multiprocessing.process import BaseProcess
from typing import Any

import torch

from specbench.decoding.ssd import (
    DraftReply,
    DraftSideStats,
    FanOut,
    MissPolicy,
    OutcomeKey,
    SpeculationDrafter,
)
from specbench.decoding.types import GenerationRequest
from specbench.errors import SpecbenchError
from specbench.models.base import LanguageModel

#: How long the worker may take to load its draft and say it is ready.
STARTUP_TIMEOUT_S = 600.0
#: How long a stopping worker may take before it is terminated.
STOP_TIMEOUT_S = 5.0
#: How often an idle worker checks that its parent is still there.
PARENT_CHECK_S = 1.0


class DraftWorkerError(SpecbenchError):
    """The draft worker failed or died."""


@dataclass(frozen=True)
class WorkerSetup:
    """What the worker needs to build its draft side.

    The draft comes from ``spec`` (a model table, loaded in the worker: weights are never
    copied between processes) or, for in-memory models without one (toy models in tests),
    from ``model`` itself. ``vocab_size``: the vocabulary the decoding process restricted the
    draft to. ``device`` overrides the spec's device (``cuda:1``). ``cores``: where the worker
    runs, with ``threads`` torch threads (``None``: unpinned).
    """

    k: int
    fan_out: FanOut
    miss_policy: MissPolicy
    vocab_size: int
    spec: dict[str, Any] | None = None
    model: LanguageModel | None = None
    device: str | None = None
    threads: int = 1
    cores: tuple[int, ...] | None = None
    saguaro: tuple[int, float] | None = None
    #: The draft side's class (importable in the worker): tests swap in a broken twin.
    drafter: type[SpeculationDrafter] = SpeculationDrafter


def _load_draft(setup: WorkerSetup) -> LanguageModel:
    if setup.model is not None:
        return setup.model
    from pydantic import TypeAdapter

    from specbench.models.loading import load_model
    from specbench.models.specs import ModelSpec

    spec = TypeAdapter(ModelSpec).validate_python(setup.spec)
    if setup.device is not None and "device" in type(spec).model_fields:
        spec = spec.model_copy(update={"device": setup.device})
    model = load_model(spec, "draft")
    if model.vocab_size != setup.vocab_size:
        model.restrict_vocab(setup.vocab_size)
    return model


def serve(conn: Connection, setup: WorkerSetup, parent_pid: int) -> None:
    """The worker's main loop (runs in the spawned process)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if setup.cores is not None and hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, setup.cores)
    torch.set_num_threads(setup.threads)
    try:
        drafter = setup.drafter(
            _load_draft(setup),
            setup.k,
            setup.fan_out,
            setup.miss_policy,
            saguaro=setup.saguaro,
        )
        conn.send(("ready", os.getpid()))
        idle_since = time.perf_counter()
        while True:
            while not conn.poll(PARENT_CHECK_S):
                if os.getppid() != parent_pid:
                    return  # the decoding process is gone
            message = conn.recv()
            drafter.stats.idle_s += time.perf_counter() - idle_since
            kind = message[0]
            if kind == "answer":
                _, sequence, key, budget = message
                conn.send(("reply", _to_wire(drafter.answer(sequence, key, budget))))
                drafter.speculate()
            elif kind == "start":
                _, request, simulate_costs = message
                drafter.model.simulate_costs = simulate_costs
                drafter.start(request)
            elif kind == "end":
                conn.send(("stats", drafter.stats))
            else:
                return
            idle_since = time.perf_counter()
    except (EOFError, BrokenPipeError, ConnectionResetError):
        return  # the pipe closed: the decoding process is gone
    except BaseException as error:  # reported to the parent, then exit (OSErrors too:
        # a draft file that cannot be read is the user's to fix, not a closed pipe)
        where = traceback.extract_tb(error.__traceback__)[-1]
        line = (
            f"{type(error).__name__}: {error} ({os.path.basename(where.filename)}:{where.lineno})"
        )
        with suppress(OSError):
            conn.send(("error", line))


class WorkerDraftSide:
    """A :class:`~specbench.decoding.ssd_proposer.DraftSide` in a worker process, started
    on first use and kept for the method's lifetime."""

    concurrent = True

    def __init__(self, setup: WorkerSetup, simulate_costs: bool = True) -> None:
        self.setup = setup
        self.simulate_costs = simulate_costs
        self._process: BaseProcess | None = None
        self._conn: Connection | None = None
        self._finalizer: weakref.finalize[Any, Any] | None = None

    @property
    def pid(self) -> int | None:
        return None if self._process is None else self._process.pid

    def launch(self) -> None:
        """Start the worker and wait until its draft is loaded (else the first round does)."""
        self._ensure_started()

    def start(self, request: GenerationRequest) -> None:
        self._send(("start", request, self.simulate_costs))

    def answer(self, sequence: Sequence[int], key: OutcomeKey | None, budget: int) -> DraftReply:
        self._send(("answer", list(sequence), key, budget))
        reply: DraftReply = self._receive("reply")
        if reply.probs is not None:
            reply.probs = torch.from_numpy(reply.probs)
        return reply

    def end(self) -> DraftSideStats:
        self._send(("end",))
        stats: DraftSideStats = self._receive("stats")
        return stats

    def close(self) -> None:
        if self._finalizer is not None:
            self._finalizer()
        self._process = self._conn = self._finalizer = None

    def _ensure_started(self) -> tuple[BaseProcess, Connection]:
        if self._process is not None and self._conn is not None:
            return self._process, self._conn
        context = get_context("spawn")
        parent_end, child_end = context.Pipe()
        process = context.Process(
            target=serve,
            args=(child_end, self.setup, os.getpid()),
            name="specbench-ssd-draft",
            daemon=True,
        )
        process.start()
        child_end.close()
        self._process, self._conn = process, parent_end
        self._finalizer = weakref.finalize(self, _stop, process, parent_end)
        self._receive("ready", timeout=STARTUP_TIMEOUT_S)
        return process, parent_end

    def _send(self, message: tuple[Any, ...]) -> None:
        _, conn = self._ensure_started()
        try:
            conn.send(message)
        except OSError:
            raise self._died() from None

    def _receive(self, expected: str, timeout: float | None = None) -> Any:
        process, conn = self._process, self._conn
        assert process is not None and conn is not None
        ready = wait([conn, process.sentinel], timeout)
        if not ready:
            self.close()
            raise DraftWorkerError(
                f"the ssd draft worker sent nothing for {timeout:.0f} s",
                "check that the draft loads on its own (specbench validate) and that the "
                "machine is not out of memory",
            )
        if conn not in ready:
            raise self._died()
        try:
            kind, payload = conn.recv()
        except (EOFError, OSError):
            raise self._died() from None
        if kind == "error":
            raise self._failed(payload)
        if kind != expected:
            self.close()
            raise DraftWorkerError(f"the ssd draft worker answered {kind!r}, not {expected!r}")
        return payload

    def _failed(self, error: str) -> DraftWorkerError:
        """The worker reported ``error`` and exited: stop what is left of it."""
        self.close()
        return DraftWorkerError(
            f"the ssd draft worker failed: {error}",
            "the draft failed in its own process; run the same preset with "
            "mode = 'inline' to see the full traceback",
        )

    def _died(self) -> DraftWorkerError:
        process, conn = self._process, self._conn
        code = None
        try:  # a worker that failed says why before it exits
            if conn is not None and conn.poll(0):
                kind, payload = conn.recv()
                if kind == "error":
                    return self._failed(payload)
        except (EOFError, OSError):
            pass
        if process is not None:
            process.join(1.0)
            code = process.exitcode
        self.close()
        return DraftWorkerError(
            f"the ssd draft worker died (exit code {code})",
            "a negative code is the signal that killed it (-9: out of memory or killed); "
            "finished samples are kept: rerun with --resume",
        )


def _to_wire(reply: DraftReply) -> DraftReply:
    """The reply with its distributions as a NumPy array: pickled as plain bytes, where a
    tensor would go through a shared-memory file and descriptor passing per message."""
    if reply.probs is not None:
        reply.probs = reply.probs.cpu().numpy()  # type: ignore[assignment]
    return reply


def _stop(process: BaseProcess, conn: Connection) -> None:
    """Ask the worker to stop, then make sure it has."""
    with suppress(OSError):
        conn.send(("stop",))
    process.join(STOP_TIMEOUT_S)
    if process.is_alive():
        process.terminate()
        process.join(STOP_TIMEOUT_S)
    if process.is_alive():
        process.kill()
        process.join()
    conn.close()
