"""A load level: many requests against one server, closed loop or Poisson arrivals.

Closed loop (``vllm bench serve --max-concurrency``): ``concurrency`` clients, each sending
its next request as soon as its last one finished. Open loop (``--request-rate``): requests
arrive at exponential intervals of mean ``1 / rate`` (seeded, so every method of a run sees
the same arrival times), at most ``concurrency`` of them in flight.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import TypeVar

T = TypeVar("T")


@dataclass
class LevelTiming:
    """When each request of a level was sent (seconds from the level's start), and how long
    the whole level took (the first send to the last answer)."""

    sent_s: list[float]
    wall_s: float


def arrival_times(count: int, request_rate: float | None, seed: int) -> list[float]:
    """When each request may be sent: all at once (closed loop), or Poisson arrivals."""
    if request_rate is None:
        return [0.0] * count
    rng = random.Random(seed)
    times, now = [], 0.0
    for _ in range(count):
        times.append(now)
        now += rng.expovariate(request_rate)
    return times


async def run_level(
    send: Callable[[int], Awaitable[T]],
    count: int,
    concurrency: int,
    arrivals: Sequence[float],
    sent: list[float] | None = None,
) -> tuple[list[T], LevelTiming]:
    """Send requests ``0..count-1`` with at most ``concurrency`` in flight, request ``i`` not
    before ``arrivals[i]``; answers in request order. ``sent`` (if given) is filled with the
    send times as they happen, so a caller interrupted mid-level still has them."""
    slots = asyncio.Semaphore(concurrency)
    start = time.perf_counter()
    sent = sent if sent is not None else [0.0] * count

    async def one(index: int) -> T:
        delay = arrivals[index] - (time.perf_counter() - start)
        if delay > 0:
            await asyncio.sleep(delay)
        async with slots:
            sent[index] = time.perf_counter() - start
            return await send(index)

    answers = await asyncio.gather(*(one(i) for i in range(count)))
    return list(answers), LevelTiming(sent, time.perf_counter() - start)
