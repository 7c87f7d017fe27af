"""The ``llama-cpp`` method: every generation runs in a llama-server this method owns.

One server per preset method (its flags are the configuration: target, draft model, draft
lengths, n-gram mode), started in ``prepare`` and stopped in ``close``. Prompts go in as
the token ids every method gets; the server answers with token ids, its timings, and (its
``/metrics`` before and after the request) the speculative counters of that request.
"""

from __future__ import annotations

import os
from typing import Any, Literal

from pydantic import Field

from specbench.api import (
    EngineMethod,
    GenerationRequest,
    GenerationResult,
    MethodModels,
    MethodParams,
    ModelsSpec,
    RunContext,
    SpecbenchError,
    SpecCounters,
    StopReason,
    counter_stats,
    gguf_path,
    parse_prometheus,
    spec_counters,
)
from specbench_llamacpp.server import LlamaServer, find_server

SpecType = Literal[
    "draft-simple",
    "ngram-simple",
    "ngram-map-k",
    "ngram-map-k4v",
    "ngram-mod",
    "ngram-cache",
]


class LlamaCppParams(MethodParams):
    """One llama-server configuration. Without ``draft`` and ``spec_type`` it is llama.cpp's
    plain decoding, the reference of the speculative configurations."""

    server: str | None = Field(
        None, description="llama-server binary (else $SPECBENCH_LLAMA_SERVER, the build, PATH)."
    )
    draft: bool = Field(
        False, description="Speculate with the preset's [models.draft] (--spec-draft-model)."
    )
    spec_type: SpecType | None = Field(
        None, description="--spec-type: an n-gram mode, or draft-simple (implied by draft)."
    )
    draft_max: int | None = Field(None, ge=1, le=64, description="--spec-draft-n-max.")
    draft_min: int | None = Field(None, ge=0, le=64, description="--spec-draft-n-min.")
    draft_p_min: float | None = Field(None, ge=0, le=1, description="--spec-draft-p-min.")
    threads: int | None = Field(None, ge=1, description="--threads (default: every core).")
    ctx_size: int = Field(4096, ge=64, description="--ctx-size of the target.")
    spec_args: list[str] = Field(
        default_factory=list,
        description="More speculative flags (--spec-ngram-*), passed as written; dropped "
        "from the plain-decoding reference.",
    )
    server_args: list[str] = Field(
        default_factory=list,
        description="More llama-server flags for every configuration, passed as written.",
    )
    startup_timeout_s: float = Field(300.0, gt=0)

    @property
    def speculative(self) -> bool:
        return self.draft or self.spec_type is not None


#: The fields of a speculative configuration: without them it is plain decoding.
_SPECULATIVE_FIELDS = ("draft", "spec_type", "draft_max", "draft_min", "draft_p_min", "spec_args")


def llama_server_args(params: LlamaCppParams, specs: ModelsSpec, slots: int) -> list[str]:
    """The llama-server flags of a configuration serving ``slots`` requests at once (each
    with ``ctx_size`` tokens), model paths from the preset's model specs."""
    args = ["--model", str(gguf_path(specs.target, "target"))]
    args += ["--ctx-size", str(params.ctx_size * slots), "--parallel", str(slots), "--metrics"]
    args += ["--threads", str(params.threads or os.cpu_count() or 1)]
    args += ["--no-webui"]
    if params.draft:
        if specs.draft is None:
            raise SpecbenchError(
                "llama-cpp with draft = true needs a [models.draft] in the preset",
                "add the draft model, or use an n-gram spec_type",
            )
        args += ["--spec-draft-model", str(gguf_path(specs.draft, "draft"))]
    spec_type = params.spec_type or ("draft-simple" if params.draft else None)
    if spec_type is not None:
        args += ["--spec-type", spec_type]
    if params.draft_max is not None:
        args += ["--spec-draft-n-max", str(params.draft_max)]
    if params.draft_min is not None:
        args += ["--spec-draft-n-min", str(params.draft_min)]
    if params.draft_p_min is not None:
        args += ["--spec-draft-p-min", str(params.draft_p_min)]
    return args + list(params.spec_args) + list(params.server_args)


def plain_params(params: LlamaCppParams) -> LlamaCppParams:
    """The same configuration without speculation: llama.cpp's plain decoding."""
    plain = params.model_dump()
    for name in _SPECULATIVE_FIELDS:
        plain.pop(name)
    return LlamaCppParams(**plain)


#: Only the samplers specbench applies, in its order; llama.cpp's other defaults (min_p
#: 0.05, repetition penalties) would change the distribution.
EXACT_SAMPLING: dict[str, Any] = {
    "samplers": ["top_k", "top_p", "temperature"],
    "min_p": 0.0,
    "typical_p": 1.0,
    "repeat_penalty": 1.0,
}


class LlamaCppMethod(EngineMethod[LlamaCppParams]):
    """llama.cpp's llama-server: plain decoding, a draft model, or n-gram speculation."""

    name = "llama-cpp"
    description = "llama.cpp llama-server (GGUF): plain, draft-model or n-gram speculation."
    needs = frozenset()  # the server loads the models itself
    ledger_phases = frozenset()  # the server's own timings fill what they can (generate)
    in_all = False
    not_in_all_reason = "an external engine (llama-server): name it in a preset's methods"
    Params = LlamaCppParams

    def __init__(self, params: LlamaCppParams, models: MethodModels) -> None:
        super().__init__(params, models)
        self.server: LlamaServer | None = None
        self._version: str | None = None

    def server_args(self) -> list[str]:
        """The llama-server flags of this configuration (model paths from the preset)."""
        return llama_server_args(self.params, self.models.require_specs(), slots=1)

    def prepare(self, context: RunContext) -> None:
        if self.server is not None:
            return
        binary = find_server(self.params.server)
        server = LlamaServer(binary, self.server_args(), context.log_path("llama-server"))
        context.on_progress(f"{context.label}: starting llama-server (log: {server.log_path})")
        server.start(self.params.startup_timeout_s)
        self.server = server
        self._version = server.version()

    def own_baseline(self) -> LlamaCppParams | None:
        return plain_params(self.params)

    def engine_info(self) -> dict[str, Any]:
        binary = self.server.binary if self.server is not None else None
        return {
            "name": "llama.cpp",
            "version": self._version,
            "options": {
                "binary": None if binary is None else str(binary),
                "args": self.server_args() if self.models.specs else [],
            },
        }

    def close(self) -> None:
        if self.server is not None:
            self.server.stop()
            self.server = None

    def _counters(self) -> SpecCounters | None:
        assert self.server is not None
        text = self.server.get_text("/metrics")
        if text is None:
            return None
        metrics = parse_prometheus(text)
        counters = spec_counters(metrics) or SpecCounters()
        calls = metrics.get("llamacpp:n_decode_total", [])
        counters.target_calls = int(sum(value for _, value in calls))
        return counters

    def generate(self, request: GenerationRequest) -> GenerationResult:
        if self.server is None:
            raise SpecbenchError("llama-cpp was used before prepare()", "call prepare(context)")
        sampling = request.sampling
        payload: dict[str, Any] = {
            "prompt": list(request.prompt_ids),
            "n_predict": request.max_new_tokens,
            "seed": request.seed % (2**32),
            "return_tokens": True,
            # Every method processes its prompt from scratch (no cache across requests).
            "cache_prompt": False,
            **EXACT_SAMPLING,
            "temperature": 0.0 if sampling.greedy else sampling.temperature,
            "top_k": sampling.top_k or 0,
            "top_p": sampling.top_p if sampling.top_p is not None else 1.0,
            "n_probs": 0,
        }
        before = self._counters()
        answer = self.server.post("/completion", payload)
        after = self._counters()
        tokens = [int(t) for t in answer.get("tokens") or []]
        stop: StopReason = "eos" if answer.get("stop_type") == "eos" else "length"
        for index, token in enumerate(tokens):
            if token in request.stop_token_ids:  # our stop set may be wider than llama.cpp's
                tokens, stop = tokens[: index + 1], "eos"
                break
        timings = answer.get("timings") or {}
        if before is not None and after is not None:
            change = after.minus(before)
            # The prompt is one decode call (n_batch covers it); its logits give token 1.
            if change.target_calls is not None:
                prompt_calls = max(1, -(-int(timings.get("prompt_n", 0)) // 2048))
                change.target_calls -= prompt_calls - 1
        else:
            change = SpecCounters(
                draft_tokens=int(timings.get("draft_n", 0)),
                accepted=int(timings.get("draft_n_accepted", 0)),
            )
        stats = counter_stats(change, len(tokens))
        for key in ("prompt_ms", "predicted_ms", "predicted_per_second"):
            if key in timings:
                stats.extra[f"engine_{key}"] = float(timings[key])
        return GenerationResult(
            tokens=tokens, stop_reason=stop, stats=stats, costs=self._costs(timings)
        )

    def _costs(self, timings: dict[str, Any]) -> dict[str, float] | None:
        """Plain decoding: the server's prompt and generation time is all target forwards
        (and its sampling). A speculative server reports one figure for drafting and
        verifying together, which no phase of the ledger can take: left unknown."""
        params = self.params
        if params.speculative or "predicted_ms" not in timings:
            return None
        return {"target": (timings.get("prompt_ms", 0.0) + timings["predicted_ms"]) / 1000.0}
