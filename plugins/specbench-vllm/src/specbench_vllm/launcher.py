"""``vllm serve`` as a server the ``server`` method starts itself (``launch.engine =
"vllm"``), run with the Python of this environment, so it needs vLLM installed here (the
vLLM environment: ``nox -s vllm``)."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from typing import Any

from pydantic import Field

from specbench.api import (
    MethodParams,
    ModelsSpec,
    ServerLauncher,
    ServerProcess,
    SpecbenchError,
)
from specbench_vllm.method import model_source, speculative_config


class VllmServeParams(MethodParams):
    """One ``vllm serve``. Without ``speculative`` it is vLLM's plain decoding."""

    speculative: dict[str, Any] | None = Field(
        None,
        description="vLLM's --speculative-config (method ngram, draft_model, eagle3, suffix, "
        "mtp; num_speculative_tokens...); draft_model defaults to the preset's draft.",
    )
    dtype: str = Field("auto", description="--dtype: auto, bfloat16, float16, float32.")
    enforce_eager: bool = Field(True, description="--enforce-eager (graph capture: minutes).")
    max_model_len: int = Field(4096, ge=64, description="--max-model-len.")
    kv_cache_space_gib: int = Field(
        2, ge=1, description="CPU KV cache (VLLM_CPU_KVCACHE_SPACE); else vLLM takes most RAM."
    )
    gpu_memory_utilization: float | None = Field(None, gt=0, le=1, description="GPU only.")
    tensor_parallel_size: int = Field(1, ge=1, description="--tensor-parallel-size.")
    seed: int = Field(0, ge=0, description="--seed (requests carry their own).")
    args: list[str] = Field(
        default_factory=list, description="More `vllm serve` flags, passed as written."
    )


def _serve_module() -> list[str]:
    """``vllm serve``'s module. The CLI asks the package metadata for "vllm", which builds
    published under another name (vllm-cpu) do not have: there the OpenAI server module
    itself, which takes the same flags."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        version("vllm")
    except PackageNotFoundError:
        return ["vllm.entrypoints.openai.api_server"]
    return ["vllm.entrypoints.cli.main", "serve"]


class VllmServerLauncher(ServerLauncher[VllmServeParams]):
    """vLLM's OpenAI-compatible server (``vllm serve``)."""

    name = "vllm"
    Params = VllmServeParams

    def build(
        self, params: VllmServeParams, models: ModelsSpec, slots: int, log_path: Path
    ) -> ServerProcess:
        if importlib.util.find_spec("vllm") is None:
            raise SpecbenchError(
                "vLLM is not installed in this environment, so `vllm serve` cannot start",
                "run specbench from the vLLM environment (see plugins/specbench-vllm/README.md, "
                "`nox -s vllm`), or start the server yourself and give params.url",
            )
        args = ["--model", model_source(models.target, "target"), "--served-model-name", "target"]
        args += ["--dtype", params.dtype, "--max-model-len", str(params.max_model_len)]
        args += ["--max-num-seqs", str(slots), "--seed", str(params.seed)]
        args += ["--tensor-parallel-size", str(params.tensor_parallel_size)]
        # Every load level sends the same prompts: a prefix cached by the last level would
        # make the next one look fast.
        args.append("--no-enable-prefix-caching")
        if params.enforce_eager:
            args.append("--enforce-eager")
        if params.gpu_memory_utilization is not None:
            args += ["--gpu-memory-utilization", str(params.gpu_memory_utilization)]
        if params.speculative:
            config = speculative_config(params.speculative, models)
            args += ["--speculative-config", json.dumps(config)]
        args += list(params.args)
        command = [sys.executable, "-m", *_serve_module(), *args]
        return ServerProcess(
            "vllm serve",
            lambda port: [*command, "--host", "127.0.0.1", "--port", str(port)],
            log_path,
            env={"VLLM_CPU_KVCACHE_SPACE": str(params.kv_cache_space_gib)},
        )

    def plain(self, params: VllmServeParams) -> VllmServeParams | None:
        return params.model_copy(update={"speculative": None}) if params.speculative else None

    def version(self, server: ServerProcess) -> str:
        from importlib.metadata import PackageNotFoundError, version

        for name in ("vllm", "vllm-cpu"):
            try:
                return f"vllm {version(name)}"
            except PackageNotFoundError:
                continue
        return "vllm unknown"
