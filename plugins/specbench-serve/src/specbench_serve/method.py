"""The ``server`` method: the preset's prompts sent to an OpenAI-compatible server, under
load, every request timed from the client's side.

A unit of work is a *load level*: every prompt of the run sent with ``concurrency``
requests in flight (or Poisson arrivals at ``request_rate``), so the runner hands all
prompts to :meth:`ServerMethod.generate_batch` at once and each becomes one sample, with
its time to first token, inter-token latencies and end-to-end latency in
``SampleRecord.serving``. The server's speculative counters are read from ``/metrics``
before and after the level; their change is the level's (and each request's share of it
fills the request's acceptance statistics, as batched engines do).
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections.abc import Sequence
from typing import Any

import httpx

from specbench.api import (
    DecodeStats,
    EngineMethod,
    GenerationRequest,
    GenerationResult,
    InterruptedGeneration,
    MethodModels,
    MethodParams,
    RunContext,
    ServedRequest,
    ServerLauncher,
    ServerProcess,
    SpecbenchError,
    SpecCounters,
    StopReason,
    counter_stats,
)
from specbench_serve import shared
from specbench_serve.client import StreamedAnswer, stream_request
from specbench_serve.counters import read_counters
from specbench_serve.load import LevelTiming, arrival_times, run_level
from specbench_serve.params import ServerParams

#: Every prompt of a run is one load level (one unit for the runner).
_ALL_PROMPTS = 1 << 30
#: What a request that Ctrl-C cut short is recorded as.
_INTERRUPTED = StreamedAnswer(error="interrupted (Ctrl-C) before it finished")


class ServerMethod(EngineMethod[ServerParams]):
    """Any OpenAI-compatible server (vLLM, SGLang, llama-server, TGI), running or started
    by specbench, under a chosen load."""

    name = "server"
    description = (
        "An OpenAI-compatible server under load (url, or launch llama-server / vllm serve): "
        "TTFT, TPOT, ITL percentiles and its /metrics speculative counters."
    )
    needs = frozenset()
    ledger_phases = frozenset()
    in_all = False
    not_in_all_reason = "a server benchmark: name it in a preset's methods with url or launch"
    Params = ServerParams

    def __init__(self, params: ServerParams, models: MethodModels) -> None:
        super().__init__(params, models)
        self.base_url: str | None = params.url
        self.server: ServerProcess | None = None
        self.model_name: str | None = params.model
        as_text = params.prompt_as == "text" or params.api == "chat"
        self.prompt_as = "text" if as_text else "token_ids"
        self._fields: dict[str, Any] = {}
        self._version = "external"
        self._engine = "server"
        self._metrics_note: str | None = None
        self._key: str | None = None
        self._label = "server"
        self._on_progress: Any = lambda message: None
        if params.launch is not None:
            specs = models.specs.model_dump(mode="json") if models.specs is not None else None
            self._key = json.dumps({"launch": params.launch, "models": specs}, sort_keys=True)
            shared.join(self._key, self, params.concurrency)

    @property
    def batch_size(self) -> int:
        return _ALL_PROMPTS

    # ------------------------------------------------------------------ lifecycle

    def prepare(self, context: RunContext) -> None:
        self._label = context.label
        self._on_progress = context.on_progress
        params = self.params
        if self._key is not None and self.server is None:
            launcher, launch_params = _launcher(params)
            specs = self.models.require_specs()
            timeout = params.startup_timeout_s or launcher.startup_timeout_s
            log = context.log_path(launcher.name)

            def build(slots: int) -> ServerProcess:
                return launcher.build(launch_params, specs, slots, log)

            self.server, started = shared.start(
                self._key, build, timeout, "raise params.startup_timeout_s"
            )
            if started:
                context.on_progress(f"{context.label}: started {launcher.name} (log: {log})")
            self.base_url = self.server.url
            self._fields = launcher.request_fields(launch_params)
            self._version = launcher.version(self.server)
            self._engine = launcher.name
        listed = self._models()
        if self.model_name is None:
            self.model_name = _first_model(listed, self.base_url)
        if params.api == "completions" and params.prompt_as == "auto":
            self._probe_token_ids()

    def close(self) -> None:
        if self._key is not None:
            shared.leave(self._key, self)
            self.server = None

    def own_baseline(self) -> ServerParams | None:
        """A launched server's plain twin (itself when it is plain), as for the engines;
        with ``url``, the server at ``plain_url``, if given."""
        params = self.params
        if params.launch is not None:
            launcher, launch_params = _launcher(params)
            plain = launcher.plain(launch_params)
            if plain is None:
                return params
            launch = {"engine": params.launch["engine"]}
            launch.update(plain.model_dump(mode="json", exclude_defaults=True))
            return params.model_copy(update={"launch": launch})
        if params.plain_url is not None:
            return params.model_copy(update={"url": params.plain_url, "plain_url": None})
        return None

    def engine_info(self) -> dict[str, Any]:
        params = self.params
        options: dict[str, Any] = {
            "url": self.base_url,
            "api": params.api,
            "model": self.model_name,
            "prompt_as": self.prompt_as,
            "concurrency": params.concurrency,
            "request_rate": params.request_rate,
        }
        if params.launch is not None:
            options["launch"] = params.launch
            if self.server is not None:
                options["command"] = self.server.command
        if self._metrics_note:
            options["metrics"] = self._metrics_note
        return {"name": self._engine, "version": self._version, "options": options}

    # ------------------------------------------------------------------ generation

    def generate(self, request: GenerationRequest) -> GenerationResult:
        return self.generate_batch([request])[0]

    def generate_batch(self, requests: list[GenerationRequest]) -> list[GenerationResult]:
        if self.base_url is None:
            raise SpecbenchError("server was used before prepare()", "call prepare(context)")
        self._check_alive()
        before = self._counters()
        finished: list[StreamedAnswer | None] = [None] * len(requests)
        sent = [0.0] * len(requests)
        start = time.perf_counter()
        try:
            answers, timing = asyncio.run(self._send_all(requests, finished, sent))
        except KeyboardInterrupt:
            # Ctrl-C mid-level: what finished is kept, the rest fails (and --resume sends it).
            timing = LevelTiming(sent, time.perf_counter() - start)
            done = [answer or _INTERRUPTED for answer in finished]
            results = [
                self._result(i, answer, self._output_ids(answer), timing, None, 0)
                for i, answer in enumerate(done)
            ]
            raise InterruptedGeneration(results) from None
        after = self._counters()
        change = after.minus(before) if before is not None and after is not None else None
        died = self._death()
        if died:
            for answer in answers:
                if answer.error is not None:
                    answer.error += f"; {died}"
        # Each answer's ids once (re-encoding a text is not free): its share of the counters
        # needs every answer's length.
        outputs = [self._output_ids(answer) for answer in answers]
        total = sum(len(ids) for ids, _ in outputs)
        return [
            self._result(index, answer, outputs[index], timing, change, total)
            for index, answer in enumerate(answers)
        ]

    async def _send_all(
        self,
        requests: Sequence[GenerationRequest],
        finished: list[StreamedAnswer | None],
        sent: list[float],
    ) -> tuple[list[StreamedAnswer], LevelTiming]:
        params = self.params
        limits = httpx.Limits(max_connections=params.concurrency + 4)
        timeout = httpx.Timeout(params.request_timeout_s, connect=30.0)
        url = f"{self.base_url}/v1/{'chat/completions' if params.api == 'chat' else 'completions'}"
        headers = self._headers()
        seed = requests[0].seed if requests else 0
        async with httpx.AsyncClient(limits=limits, timeout=timeout) as client:

            async def send(index: int) -> StreamedAnswer:
                payload = self._payload(requests[index])
                limit = params.request_timeout_s
                answer = await stream_request(client, url, payload, headers, limit)
                finished[index] = answer
                return answer

            arrivals = arrival_times(len(requests), params.request_rate, seed)
            return await run_level(send, len(requests), params.concurrency, arrivals, sent)

    def _payload(self, request: GenerationRequest) -> dict[str, Any]:
        params = self.params
        sampling = request.sampling
        payload: dict[str, Any] = {
            "model": self.model_name,
            "max_tokens": request.max_new_tokens,
            "temperature": 0.0 if sampling.greedy else sampling.temperature,
            "top_p": sampling.top_p if sampling.top_p is not None else 1.0,
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        if sampling.top_k:
            payload["top_k"] = sampling.top_k
        if params.send_seed:
            payload["seed"] = request.seed % (2**31)
        if params.ignore_eos:
            payload["ignore_eos"] = True
        if params.api == "chat":
            payload["messages"] = self._messages(request)
        elif self.prompt_as == "token_ids":
            payload["prompt"] = list(request.prompt_ids)
        else:
            payload["prompt"] = self.models.tokenizer.decode(request.prompt_ids)
        return {**payload, **self._fields, **params.extra_body}

    def _messages(self, request: GenerationRequest) -> list[dict[str, str]]:
        if request.messages:
            return [{"role": role, "content": content} for role, content in request.messages]
        return [{"role": "user", "content": self.models.tokenizer.decode(request.prompt_ids)}]

    def _output_ids(self, answer: StreamedAnswer) -> tuple[list[int], str]:
        """The answer's ids and where they came from: streamed by the server, or its text
        encoded again (none for a failed answer)."""
        if answer.error is not None:
            return [], "server"
        ids = answer.token_ids
        if ids is not None:
            return ids, "server"
        return (self.models.tokenizer.encode(answer.text) if answer.text else []), "retokenized"

    def _result(
        self,
        index: int,
        answer: StreamedAnswer,
        output: tuple[list[int], str],
        timing: LevelTiming,
        change: SpecCounters | None,
        total_tokens: int,
    ) -> GenerationResult:
        params = self.params
        tokens, source = output
        served = ServedRequest(
            sent_s=timing.sent_s[index],
            ttft_s=answer.chunk_times[0] if answer.chunk_times else None,
            e2e_s=answer.e2e_s,
            chunk_times=list(answer.chunk_times),
            usage_tokens=answer.usage_tokens,
            stream_tokens=len(tokens),
            prompt_as=self.prompt_as,
            output_ids=source,
            api=params.api,
            concurrency=params.concurrency,
            request_rate=params.request_rate,
            level_wall_s=timing.wall_s,
            counters=change,
        )
        if answer.error is not None:
            return GenerationResult(
                tokens=[],
                stop_reason="error",
                stats=DecodeStats(),
                latency_s=answer.e2e_s,
                error=answer.error,
                served=served,
            )
        stop: StopReason = "length" if answer.finish_reason == "length" else "eos"
        if change is not None and change.drafts > 0 and total_tokens:
            stats = counter_stats(change.scaled(len(tokens) / total_tokens), len(tokens))
        else:
            stats = counter_stats(SpecCounters(), len(tokens))
        for key in ("draft_n", "draft_n_accepted", "predicted_per_second"):
            if key in answer.timings:
                stats.extra[f"server_{key}"] = float(answer.timings[key])
        return GenerationResult(
            tokens=tokens, stop_reason=stop, stats=stats, latency_s=answer.e2e_s, served=served
        )

    # ------------------------------------------------------------------ the server's state

    def _headers(self) -> dict[str, str]:
        variable = self.params.api_key_env
        if variable is None:
            return {}
        key = os.environ.get(variable)
        if not key:
            raise SpecbenchError(
                f"params.api_key_env names ${variable}, which is not set",
                f"export {variable}=<the server's API key>, or drop api_key_env",
            )
        return {"Authorization": f"Bearer {key}"}

    def _counters(self) -> SpecCounters | None:
        if not self.params.metrics or self.base_url is None:
            return None
        counters, why = read_counters(self.base_url, self._headers())
        if counters is None and self._metrics_note is None:
            self._metrics_note = f"no speculative counters: {why}"
            self._on_progress(f"{self._label}: note: {self._metrics_note}")
        return counters

    def _models(self) -> httpx.Response:
        """The server's ``/v1/models`` answer: whether it is reachable and lets us in."""
        try:
            answer = httpx.get(f"{self.base_url}/v1/models", headers=self._headers(), timeout=30)
        except httpx.HTTPError as error:
            where = "params.url" if self.params.url else self._engine
            died = self._death()
            raise SpecbenchError(
                f"the server at {self.base_url} is not reachable ({type(error).__name__}: {error})",
                f"start it, or check {where}" + (f"; {died}" if died else ""),
            ) from error
        if answer.status_code in (401, 403):
            raise SpecbenchError(
                f"the server at {self.base_url} refused the request ({answer.status_code})",
                "set params.api_key_env to the variable holding its API key",
            )
        return answer

    def _probe_token_ids(self) -> None:
        """Completions take token ids on vLLM and llama-server; a server that refuses them
        (4xx) gets text instead, and the run says so."""
        probe = self.models.tokenizer.encode("Hello") or [0]
        payload = {"model": self.model_name, "prompt": probe, "max_tokens": 1, "stream": True}
        answer = asyncio.run(self._probe(payload))
        if answer.error is not None and "answered 4" in answer.error:
            self.prompt_as = "text"
            self._on_progress(
                f"{self._label}: note: the server refused token ids ({answer.error}); "
                "prompts go as decoded text"
            )
        elif answer.error is not None:
            raise SpecbenchError(
                f"the server at {self.base_url} failed a 1-token request: {answer.error}",
                "check the server's log and params (model, api)",
            )

    async def _probe(self, payload: dict[str, Any]) -> StreamedAnswer:
        async with httpx.AsyncClient(timeout=httpx.Timeout(60.0)) as client:
            url = f"{self.base_url}/v1/completions"
            return await stream_request(client, url, payload, self._headers(), 120.0)

    def _death(self) -> str:
        """How a server specbench started died, if it did ('' while it runs)."""
        server = self.server
        if server is None or server.exit_code is None:
            return ""
        return f"{server.name} exited with code {server.exit_code} (log: {server.log_path})"

    def _check_alive(self) -> None:
        died = self._death()
        if died:
            assert self.server is not None
            raise SpecbenchError(
                f"{died}: {self.server.log_tail()}",
                "read its log; finished samples are kept: rerun with --resume to continue",
            )
        if self.params.url is not None:
            try:
                self._models()
            except SpecbenchError as error:
                raise SpecbenchError(
                    error.message, "restart it, then rerun with --resume to continue"
                ) from error


def _first_model(answer: httpx.Response, base_url: str | None) -> str:
    try:
        models = [str(m["id"]) for m in answer.json().get("data", [])]
    except (ValueError, KeyError, TypeError, AttributeError):
        models = []
    if not models:
        raise SpecbenchError(
            f"the server at {base_url} lists no model at /v1/models",
            "set params.model to the name it serves",
        )
    return models[0]


def _launcher(params: ServerParams) -> tuple[ServerLauncher, MethodParams]:
    found = params.launcher
    assert found is not None
    return found
