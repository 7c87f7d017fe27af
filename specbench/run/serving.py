"""What a server method's results become in a sample record (``SampleRecord.serving``)."""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import asdict
from itertools import pairwise

from specbench.decoding.types import GenerationResult, ServedRequest, SpecCounters
from specbench.records import RequestTiming, ServingSample


def request_timing(served: ServedRequest, error: str | None) -> RequestTiming:
    """One request's latencies: ITL between output chunks, TPOT over the tokens after the
    first (the server's usage count where it gave one)."""
    times = served.chunk_times
    tokens = served.usage_tokens if served.usage_tokens is not None else served.stream_tokens
    tpot = None
    if served.ttft_s is not None and tokens > 1 and error is None:
        tpot = (served.e2e_s - served.ttft_s) / (tokens - 1)
    return RequestTiming(
        sent_s=served.sent_s,
        ttft_s=served.ttft_s,
        e2e_s=served.e2e_s,
        itl_s=[later - earlier for earlier, later in pairwise(times)],
        tpot_s=tpot,
        output_tokens=tokens,
        usage_tokens=served.usage_tokens,
        stream_tokens=served.stream_tokens,
        output_ids="retokenized" if served.output_ids == "retokenized" else "server",
        error=error,
    )


def serving_sample(
    turns: Sequence[GenerationResult], levels: Sequence[GenerationResult]
) -> ServingSample | None:
    """The serving record of one sample (its ``turns``, one request each), with the load
    levels its unit ran (``levels``: one result per turn, whose counters and wall time are
    the level's); ``None`` for methods that do not serve."""
    served = [turn.served for turn in turns if turn.served is not None]
    if not served:
        return None
    first = served[0]
    counters = _sum([level.served.counters for level in levels if level.served is not None])
    return ServingSample(
        api="chat" if first.api == "chat" else "completions",
        prompt_as="text" if first.prompt_as == "text" else "token_ids",
        concurrency=first.concurrency,
        request_rate=first.request_rate,
        requests=[
            request_timing(turn.served, turn.error) for turn in turns if turn.served is not None
        ],
        level_wall_s=sum(
            level.served.level_wall_s or 0.0 for level in levels if level.served is not None
        ),
        counters=None if counters is None else asdict(counters),
    )


def _sum(changes: Sequence[SpecCounters | None]) -> SpecCounters | None:
    known = [change for change in changes if change is not None]
    return functools.reduce(SpecCounters.plus, known) if known else None
