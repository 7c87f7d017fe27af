"""Splitting this machine's cores between two processes, and pinning a process to its share.

Asynchronous speculation runs the draft in a worker process beside the target. On a CPU the
two only run side by side if each keeps to its own cores: the worker takes the last cores
the process may use, the decoding process the rest, and each runs that many torch threads.
Linux only (``sched_setaffinity``); elsewhere nothing is pinned.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager, suppress


def usable_cores() -> list[int]:
    """The cores this process may run on, in order."""
    if hasattr(os, "sched_getaffinity"):
        return sorted(os.sched_getaffinity(0))
    return list(range(os.cpu_count() or 1))


def split_cores(worker_threads: int) -> tuple[list[int], list[int]] | None:
    """``(this process's cores, the worker's cores)``: the worker takes the last
    ``worker_threads``; ``None`` when fewer than ``worker_threads + 1`` cores are usable."""
    cores = usable_cores()
    if len(cores) <= worker_threads:
        return None
    return cores[:-worker_threads], cores[-worker_threads:]


@contextmanager
def torch_threads(threads: int | None) -> Iterator[None]:
    """Inside the block torch uses ``threads`` threads (``None``: unchanged)."""
    import torch

    if threads is None:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _threads() -> list[int]:
    try:
        return [int(tid) for tid in os.listdir("/proc/self/task")]
    except OSError:
        return [0]


@contextmanager
def pinned(cores: list[int], threads: int) -> Iterator[None]:
    """Inside the block every thread of this process runs on ``cores`` and torch uses
    ``threads`` threads; both are restored afterwards."""
    if not hasattr(os, "sched_setaffinity"):
        with torch_threads(threads):
            yield
        return
    before: dict[int, set[int]] = {}
    # Every existing thread: torch's pool threads keep the mask they were started with.
    for tid in _threads():
        with suppress(OSError):  # a thread that ended meanwhile
            before[tid] = os.sched_getaffinity(tid)
            os.sched_setaffinity(tid, cores)
    try:
        with torch_threads(threads):
            yield
    finally:
        for tid in _threads():
            with suppress(OSError):
                os.sched_setaffinity(tid, before.get(tid, before.get(os.getpid(), cores)))
