"""One streamed request to an OpenAI-compatible endpoint, timed as it arrives.

httpx sends it and httpx-sse reads the event stream; this module only reads the fields of
OpenAI's streaming format (``choices[0].text`` or ``.delta.content``, ``finish_reason``,
``usage``) and the ones servers add: ``token_ids`` (vLLM's ``return_token_ids``) and
``timings`` (llama-server's per-request speculative counts). Every failure becomes a
one-line ``error`` on the answer, never an exception: a failed request is a result.
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass, field
from typing import Any

import httpx
from httpx_sse import SSEError, aconnect_sse


@dataclass
class StreamedAnswer:
    """What one request's stream carried, and when (seconds from sending it)."""

    text_pieces: list[str] = field(default_factory=list)
    #: Arrival time of each chunk that carried output.
    chunk_times: list[float] = field(default_factory=list)
    #: Token ids per output chunk, where the server streamed them (else ``None``).
    chunk_ids: list[list[int] | None] = field(default_factory=list)
    finish_reason: str | None = None
    usage_tokens: int | None = None
    timings: dict[str, Any] = field(default_factory=dict)
    e2e_s: float = 0.0
    error: str | None = None

    @property
    def text(self) -> str:
        return "".join(self.text_pieces)

    @property
    def token_ids(self) -> list[int] | None:
        """The output's ids when every output chunk carried its ids."""
        if not self.chunk_ids or any(ids is None for ids in self.chunk_ids):
            return None
        return [token for ids in self.chunk_ids if ids is not None for token in ids]


async def stream_request(
    client: httpx.AsyncClient,
    url: str,
    payload: dict[str, Any],
    headers: dict[str, str],
    timeout_s: float,
) -> StreamedAnswer:
    """POST ``payload`` (with ``stream: true``) to ``url`` and read its events."""
    answer = StreamedAnswer()
    start = time.perf_counter()
    try:
        await asyncio.wait_for(_read(client, url, payload, headers, answer, start), timeout_s)
    except asyncio.TimeoutError:
        answer.error = (
            f"no complete answer within {timeout_s:g} s (request_timeout_s) after "
            f"{len(answer.chunk_times)} chunks"
        )
    except httpx.ConnectError as error:
        answer.error = f"cannot connect to {url} ({_reason(error)})"
    except httpx.TimeoutException as error:
        answer.error = f"timed out talking to {url} ({type(error).__name__})"
    except (httpx.RemoteProtocolError, httpx.ReadError) as error:
        answer.error = (
            f"the stream was cut after {len(answer.chunk_times)} chunks ({_reason(error)})"
        )
    except httpx.HTTPError as error:
        answer.error = f"request to {url} failed ({type(error).__name__}: {_reason(error)})"
    answer.e2e_s = time.perf_counter() - start
    return answer


async def _read(
    client: httpx.AsyncClient,
    url: str,
    payload: dict[str, Any],
    headers: dict[str, str],
    answer: StreamedAnswer,
    start: float,
) -> None:
    async with aconnect_sse(client, "POST", url, json=payload, headers=headers) as source:
        response = source.response
        if response.status_code >= 400:
            body = (await response.aread()).decode(errors="replace")
            answer.error = f"the server answered {response.status_code}: {_one_line(body)}"
            return
        try:
            async for event in source.aiter_sse():
                if event.data.strip() == "[DONE]":
                    break
                try:
                    chunk = json.loads(event.data)
                except ValueError:
                    answer.error = f"the server sent a chunk that is not JSON: {event.data[:80]!r}"
                    return
                if not isinstance(chunk, dict):
                    continue
                if "error" in chunk:
                    answer.error = f"the server reported an error mid-stream: {_error(chunk)}"
                    return
                _take(chunk, answer, time.perf_counter() - start)
        except SSEError as error:
            kind = response.headers.get("content-type", "?")
            answer.error = f"the answer is not an event stream ({kind}): {error}"
            return
        if answer.finish_reason is None:
            answer.error = (
                f"the stream was cut after {len(answer.chunk_times)} chunks (it ended with no "
                "finish_reason)"
            )


def _take(chunk: dict[str, Any], answer: StreamedAnswer, at: float) -> None:
    usage = chunk.get("usage")
    if isinstance(usage, dict) and usage.get("completion_tokens") is not None:
        answer.usage_tokens = int(usage["completion_tokens"])
    timings = chunk.get("timings")
    if isinstance(timings, dict):
        answer.timings = timings
    for choice in chunk.get("choices") or []:
        if not isinstance(choice, dict) or choice.get("index", 0) != 0:
            continue
        delta = choice.get("delta")
        piece = choice.get("text")
        if isinstance(delta, dict):
            piece = delta.get("content")
        ids = choice.get("token_ids")
        chunk_ids = [int(t) for t in ids] if isinstance(ids, list) and ids else None
        if piece or chunk_ids:
            answer.text_pieces.append(piece or "")
            answer.chunk_times.append(at)
            answer.chunk_ids.append(chunk_ids)
        if choice.get("finish_reason"):
            answer.finish_reason = str(choice["finish_reason"])


def _error(chunk: dict[str, Any]) -> str:
    error = chunk.get("error")
    if isinstance(error, dict):
        return _one_line(str(error.get("message") or error))
    return _one_line(str(error))


def _reason(error: BaseException) -> str:
    return _one_line(str(error) or type(error).__name__)


def _one_line(text: str, limit: int = 200) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 3] + "..."
