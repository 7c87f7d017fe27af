"""A server's speculative-decoding counters, from its Prometheus ``/metrics``.

vLLM exports ``vllm:spec_decode_num_drafts``, ``..._num_draft_tokens``,
``..._num_accepted_tokens`` and ``..._num_accepted_tokens_per_pos{position}``; llama-server
(with ``--metrics``) the same schema under ``llamacpp:``. Counters are matched by that
schema whatever the prefix, and summed over label sets (vLLM labels by model and engine).
A level's counters are the change over the level; with other clients on the same server
that change includes their requests too.
"""

from __future__ import annotations

import httpx

from specbench.api import SpecCounters, parse_prometheus, per_position

_DRAFTS = "spec_decode_num_drafts"
_DRAFT_TOKENS = "spec_decode_num_draft_tokens"
_ACCEPTED = "spec_decode_num_accepted_tokens"
_PER_POSITION = "spec_decode_num_accepted_tokens_per_pos"


def counters_from_text(text: str) -> SpecCounters | None:
    """The speculative counters in a ``/metrics`` text; ``None`` when it has none."""
    metrics = parse_prometheus(text)
    found: dict[str, list[tuple[dict[str, str], float]]] = {}
    for sample_name, samples in metrics.items():
        name = sample_name.split(":", 1)[-1].removesuffix("_total")
        if name in (_DRAFTS, _DRAFT_TOKENS, _ACCEPTED, _PER_POSITION):
            found.setdefault(name, []).extend(samples)
    if _DRAFTS not in found:
        return None

    def total(name: str) -> int:
        return int(sum(value for _, value in found.get(name, [])))

    positions: dict[int, int] = {}
    for labels, value in found.get(_PER_POSITION, []):
        for index, count in enumerate(per_position([(labels, value)])):
            positions[index] = positions.get(index, 0) + count
    width = max(positions, default=-1) + 1
    return SpecCounters(
        drafts=total(_DRAFTS),
        draft_tokens=total(_DRAFT_TOKENS),
        accepted=total(_ACCEPTED),
        accepted_per_position=[positions.get(i, 0) for i in range(width)],
    )


def read_counters(base_url: str, headers: dict[str, str]) -> tuple[SpecCounters | None, str]:
    """The server's counters now, or ``None`` and why not (one line)."""
    try:
        answer = httpx.get(f"{base_url}/metrics", headers=headers, timeout=30)
    except httpx.HTTPError as error:
        return None, f"its /metrics did not answer ({type(error).__name__})"
    if answer.status_code != 200:
        return None, f"its /metrics answered {answer.status_code}"
    counters = counters_from_text(answer.text)
    if counters is None:
        return None, "its /metrics has no spec_decode counters"
    return counters, ""
