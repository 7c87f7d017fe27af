"""llama-server as a server the ``server`` method starts itself (``launch.engine =
"llama-server"``): the same flags as the ``llama-cpp`` method, with one slot per request
the heaviest load level keeps in flight."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from specbench.api import ModelsSpec, ServerLauncher, ServerProcess
from specbench_llamacpp.method import (
    EXACT_SAMPLING,
    LlamaCppParams,
    llama_server_args,
    plain_params,
)
from specbench_llamacpp.server import LlamaServer, find_server


class LlamaServerLauncher(ServerLauncher[LlamaCppParams]):
    """llama.cpp's llama-server: plain, draft-model or n-gram speculation."""

    name = "llama-server"
    Params = LlamaCppParams

    def build(
        self, params: LlamaCppParams, models: ModelsSpec, slots: int, log_path: Path
    ) -> ServerProcess:
        return LlamaServer(find_server(params.server), llama_server_args(params, models, slots),
                           log_path)  # fmt: skip

    def plain(self, params: LlamaCppParams) -> LlamaCppParams | None:
        return plain_params(params) if params.speculative else None

    def request_fields(self, params: LlamaCppParams) -> dict[str, Any]:
        # Every load level sends the same prompts: a prompt cached by the last level would
        # make the next one look fast.
        return {**EXACT_SAMPLING, "cache_prompt": False}

    def version(self, server: ServerProcess) -> str:
        return server.version() if isinstance(server, LlamaServer) else "unknown"
