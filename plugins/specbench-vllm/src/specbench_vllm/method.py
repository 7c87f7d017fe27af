"""The ``vllm`` method: every generation runs in a vLLM offline ``LLM`` engine.

One engine per preset method (its ``speculative`` table is the configuration), built in
``prepare`` from the preset's model specs and released in ``close``. Prompts go in as the
token ids every method gets. Per-request statistics are the change of vLLM's cumulative
counters (``LLM.get_metrics()``) over the request; requests run one at a time for latency,
or ``batch_size`` at a time for throughput.
"""

from __future__ import annotations

import gc
import os
from pathlib import Path
from typing import Any

from pydantic import Field

from specbench.api import (
    EngineMethod,
    GenerationRequest,
    GenerationResult,
    HFModelSpec,
    MethodModels,
    MethodParams,
    ModelSpecBase,
    ModelsSpec,
    RunContext,
    SpecbenchError,
    SpecCounters,
    StopReason,
    counter_stats,
    engine_model,
)

#: Upstream bug: on the CPU, speculative decoding at temperature > 0 never writes the
#: per-token sampling buffers, so target probabilities become NaN (acceptance ~1%).
CPU_SAMPLING_BUG = (
    "vllm-project/vllm#55005: vLLM's CPU speculative decoding at temperature > 0 is broken "
    "upstream (target probabilities NaN); these rows are measured as they are, and "
    "`specbench audit` fails them"
)


class VllmParams(MethodParams):
    """One vLLM engine. Without ``speculative`` it is vLLM's plain decoding, the reference
    of the speculative configurations."""

    speculative: dict[str, Any] | None = Field(
        None,
        description="vLLM's speculative_config, passed through: method (ngram, draft_model, "
        "eagle, eagle3, suffix, mtp), num_speculative_tokens, model (a head; draft_model "
        "defaults to the preset's draft), prompt_lookup_max, draft_tensor_parallel_size...",
    )
    dtype: str = Field("auto", description="vLLM dtype: auto, bfloat16, float16, float32.")
    enforce_eager: bool = Field(True, description="No graph capture/compile (minutes on CPU).")
    max_model_len: int = Field(4096, ge=64)
    kv_cache_space_gib: int = Field(
        2, ge=1, description="CPU KV cache (VLLM_CPU_KVCACHE_SPACE); else vLLM takes most RAM."
    )
    gpu_memory_utilization: float | None = Field(None, gt=0, le=1, description="GPU only.")
    tensor_parallel_size: int = Field(1, ge=1)
    batch_size: int = Field(1, ge=1, le=256, description="Prompts per generate call.")
    seed: int = Field(0, ge=0, description="The engine's seed (requests carry their own).")
    multiprocessing: bool = Field(
        True,
        description="Run the engine core in its own process (vLLM's default). Off keeps one "
        "process, but then an engine started after an ngram engine fails: vLLM 0.32's "
        "kernel registration trips over llvmlite, which the ngram proposer imports.",
    )
    engine_args: dict[str, Any] = Field(
        default_factory=dict, description="More LLM(...) arguments, passed as written."
    )

    @property
    def is_speculative(self) -> bool:
        return bool(self.speculative)


class VllmMethod(EngineMethod[VllmParams]):
    """vLLM's offline engine: plain decoding, or any of its speculative methods."""

    name = "vllm"
    description = "vLLM offline engine: plain, or any speculative_config (ngram, draft, EAGLE)."
    needs = frozenset()  # the engine loads the models itself
    ledger_phases = frozenset()  # the engine's phases are not visible from here: unknown
    in_all = False
    not_in_all_reason = "an external engine (vLLM): name it in a preset's methods"
    Params = VllmParams

    def __init__(self, params: VllmParams, models: MethodModels) -> None:
        super().__init__(params, models)
        self.llm: Any = None
        self._known_issues: list[str] = []

    def engine_kwargs(self) -> dict[str, Any]:
        """The ``LLM(...)`` arguments of this configuration (model folders from the preset)."""
        params = self.params
        specs = self.models.require_specs()
        kwargs: dict[str, Any] = {
            "model": model_source(specs.target, "target"),
            "dtype": params.dtype,
            "enforce_eager": params.enforce_eager,
            "max_model_len": params.max_model_len,
            "tensor_parallel_size": params.tensor_parallel_size,
            "seed": params.seed,
            "disable_log_stats": False,  # get_metrics() needs the stat loggers
        }
        if isinstance(specs.target, HFModelSpec) and specs.target.revision:
            kwargs["revision"] = specs.target.revision
        if params.gpu_memory_utilization is not None:
            kwargs["gpu_memory_utilization"] = params.gpu_memory_utilization
        if params.speculative:
            kwargs["speculative_config"] = speculative_config(params.speculative, specs)
        kwargs.update(params.engine_args)
        return kwargs

    def prepare(self, context: RunContext) -> None:
        if self.llm is not None:
            return
        try:
            import torch
            import vllm
        except ImportError as error:
            raise SpecbenchError(
                f"vLLM is not importable here ({error})",
                "install it in its own environment: see plugins/specbench-vllm/README.md "
                "(or `nox -s vllm`)",
            ) from error
        params = self.params
        os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", str(params.kv_cache_space_gib))
        os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "1" if params.multiprocessing else "0"
        on_cpu = not torch.cuda.is_available()
        if on_cpu and params.is_speculative and not context.sampling.greedy:
            self._known_issues.append(CPU_SAMPLING_BUG)
            context.on_progress(f"{context.label}: warning: {CPU_SAMPLING_BUG}")
        context.on_progress(f"{context.label}: starting vLLM {vllm.__version__} (30-70 s on CPU)")
        try:
            self.llm = vllm.LLM(**self.engine_kwargs())
        except SpecbenchError:
            raise
        except Exception as error:
            raise SpecbenchError(
                f"vLLM failed to start {context.label}: {type(error).__name__}: "
                f"{str(error).strip().splitlines()[-1] if str(error).strip() else ''}",
                "check the speculative settings and the model folders; vLLM's log is above",
            ) from error

    def own_baseline(self) -> VllmParams | None:
        return self.params.model_copy(update={"speculative": None})

    def engine_info(self) -> dict[str, Any]:
        import vllm

        options = self.engine_kwargs()
        options["VLLM_CPU_KVCACHE_SPACE"] = os.environ.get("VLLM_CPU_KVCACHE_SPACE")
        info: dict[str, Any] = {"name": "vllm", "version": vllm.__version__, "options": options}
        if self._known_issues:
            info["known_issues"] = list(self._known_issues)
        return info

    def close(self) -> None:
        if self.llm is not None:
            engine = getattr(self.llm, "llm_engine", None)
            shutdown = getattr(engine, "shutdown", None)
            if callable(shutdown):
                shutdown()
            self.llm = None
            gc.collect()

    def _counters(self) -> SpecCounters:
        counters = SpecCounters()
        calls = 0
        found_calls = False
        for metric in self.llm.get_metrics():
            name = metric.name
            if name == "vllm:spec_decode_num_drafts":
                counters.drafts += int(metric.value)
            elif name == "vllm:spec_decode_num_draft_tokens":
                counters.draft_tokens += int(metric.value)
            elif name == "vllm:spec_decode_num_accepted_tokens":
                counters.accepted += int(metric.value)
            elif name == "vllm:spec_decode_num_accepted_tokens_per_pos":
                values = list(metric.values)
                width = max(len(values), len(counters.accepted_per_position))
                mine = counters.accepted_per_position + [0] * width
                counters.accepted_per_position = [
                    mine[i] + (values[i] if i < len(values) else 0) for i in range(width)
                ]
            elif name == "vllm:iteration_tokens_total":
                calls += int(metric.count)  # one engine step per observation
                found_calls = True
        counters.target_calls = calls if found_calls else None
        return counters

    def _sampling(self, request: GenerationRequest) -> Any:
        from vllm import SamplingParams

        sampling = request.sampling
        return SamplingParams(
            temperature=0.0 if sampling.greedy else sampling.temperature,
            top_k=sampling.top_k or 0,
            top_p=sampling.top_p if sampling.top_p is not None else 1.0,
            seed=request.seed % (2**31),
            max_tokens=request.max_new_tokens,
            stop_token_ids=sorted(request.stop_token_ids),
            detokenize=False,
        )

    def generate(self, request: GenerationRequest) -> GenerationResult:
        return self.generate_batch([request])[0]

    def generate_batch(self, requests: list[GenerationRequest]) -> list[GenerationResult]:
        if self.llm is None:
            raise SpecbenchError("vllm was used before prepare()", "call prepare(context)")
        from vllm.inputs import TokensPrompt

        prompts = [TokensPrompt(prompt_token_ids=list(r.prompt_ids)) for r in requests]
        # vLLM's metrics are process-wide: engines of other preset methods in this process
        # move them too, so read them right before and after this call.
        before = self._counters()
        outputs = self.llm.generate(prompts, [self._sampling(r) for r in requests], use_tqdm=False)
        after = self._counters()
        change = after.minus(before)
        results = []
        total_tokens = sum(len(o.outputs[0].token_ids) for o in outputs)
        for output in outputs:
            completion = output.outputs[0]
            tokens = [int(t) for t in completion.token_ids]
            stop: StopReason = "length" if completion.finish_reason == "length" else "eos"
            if len(requests) == 1:
                stats = counter_stats(change, len(tokens))
            else:
                # A batch shares its steps: each sequence gets its share of the counters.
                share = len(tokens) / total_tokens if total_tokens else 0.0
                stats = counter_stats(change.scaled(share), len(tokens))
            results.append(GenerationResult(tokens=tokens, stop_reason=stop, stats=stats))
        return results


def speculative_config(speculative: dict[str, Any], specs: ModelsSpec) -> dict[str, Any]:
    """vLLM's speculative_config as the preset gives it; ``draft_model`` without a ``model``
    gets the preset's draft."""
    config = dict(speculative)
    if config.get("method") == "draft_model" and "model" not in config:
        if specs.draft is None:
            raise SpecbenchError(
                "vllm draft_model needs a [models.draft] in the preset (or speculative.model)",
                "add the draft model to the preset",
            )
        config["model"] = model_source(specs.draft, "draft")
    return config


def model_source(spec: ModelSpecBase, role: str) -> str:
    """What vLLM loads for a model spec: a catalogue model's converted folder, a local
    folder, or a hub id (vLLM resolves it through the hub cache, like transformers)."""
    spec, entry = engine_model(spec, role, "vLLM")
    if entry is not None:
        return str(entry.hf_dir())
    local = Path(spec.model).expanduser()
    if local.exists():
        return str(local)
    return spec.model
