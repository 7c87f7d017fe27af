"""A server's speculative-decoding counters, read from its Prometheus ``/metrics``
(:func:`specbench.api.spec_counters` knows vLLM's and llama-server's schema). A level's
counters are the change over the level; with other clients on the same server that change
includes their requests too.
"""

from __future__ import annotations

import httpx

from specbench.api import SpecCounters, parse_prometheus, spec_counters


def read_counters(base_url: str, headers: dict[str, str]) -> tuple[SpecCounters | None, str]:
    """The server's counters now, or ``None`` and why not (one line)."""
    try:
        answer = httpx.get(f"{base_url}/metrics", headers=headers, timeout=30)
    except httpx.HTTPError as error:
        return None, f"its /metrics did not answer ({type(error).__name__})"
    if answer.status_code != 200:
        return None, f"its /metrics answered {answer.status_code}"
    counters = spec_counters(parse_prometheus(answer.text))
    if counters is None:
        return None, "its /metrics has no spec_decode counters"
    return counters, ""
