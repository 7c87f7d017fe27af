"""One server process an engine plugin owns: started on a free local port, health-checked,
logged beside the results, stopped.

The server runs in its own session (process group), so a Ctrl-C in the terminal reaches
specbench, which stops the server itself after writing what it has; ``atexit`` stops any
server still running when the interpreter exits. llama.cpp's ``llama-server`` and
``vllm serve`` are both run through it.
"""

from __future__ import annotations

import atexit
import os
import re
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, ClassVar, Generic

from typing_extensions import TypeVar

from specbench.entry_points import LoadedGroup, load_entry_points
from specbench.errors import SpecbenchError
from specbench.plugins import MethodParams

if TYPE_CHECKING:
    from specbench.models.specs import ModelsSpec

#: A launcher's parameter class.
LP = TypeVar("LP", bound=MethodParams, default=MethodParams)

_RUNNING: set[ServerProcess] = set()
#: A log line that reads as a cause, and the logger prefix it may carry ("(Worker pid=1)
#: ERROR 12-05 00:50:51 [file.py:315] ").
_CAUSE = re.compile(r"\bERROR\b|(?i:\berror:)|died unexpectedly|\bKilled\b|(?i:out of memory)")
_LOG_PREFIX = re.compile(r"^(\([^)]*\)\s*)?([A-Z]+ \d\d-\d\d [\d:]+ \[[^\]]*\]\s*)?")


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class ServerProcess:
    """A server started on 127.0.0.1; :meth:`start` blocks until ``health_path`` answers 200.

    ``command(port)`` is the command line for a port; ``name`` names the server in errors
    (``llama-server``, ``vllm serve``); its output goes to ``log_path``.
    """

    def __init__(
        self,
        name: str,
        command: Callable[[int], list[str]],
        log_path: Path,
        health_path: str = "/health",
        env: Mapping[str, str] | None = None,
    ) -> None:
        self.name = name
        self._command = command
        self.log_path = log_path
        self.health_path = health_path
        self.env = dict(env) if env is not None else None
        self.port = 0
        self.process: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def command(self) -> list[str]:
        return self._command(self.port)

    @property
    def exit_code(self) -> int | None:
        """The server's exit code once it has exited, else ``None``."""
        return None if self.process is None else self.process.poll()

    def start(self, timeout_s: float, hint: str = "raise the startup timeout") -> None:
        self.port = free_port()
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = self.log_path.open("ab")
        self._log.write(f"$ {' '.join(self.command)}\n".encode())
        self._log.flush()
        env = None if self.env is None else {**os.environ, **self.env}
        self.process = subprocess.Popen(
            self.command,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            env=env,
        )
        _RUNNING.add(self)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                reason = self.log_reason()
                self.stop()
                code = self.process.returncode
                killed = " (-9: killed, most often for lack of memory)" if "-9" in reason else ""
                raise SpecbenchError(
                    f"{self.name} exited with code {code} while starting: {reason}{killed}",
                    f"read {self.log_path} for the whole log",
                )
            if self.healthy():
                return
            time.sleep(0.25)
        self.stop()
        raise SpecbenchError(
            f"{self.name} did not become healthy within {timeout_s:.0f} s",
            f"{hint}, or read {self.log_path}",
        )

    def healthy(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.url}{self.health_path}", timeout=2) as answer:
                return bool(answer.status == 200)
        except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
            return False

    def log_reason(self) -> str:
        """The log's first line that reads as the cause (an error, a died or killed
        process), without the logger's prefix; else its last lines. A server's last lines
        are often shutdown noise after the cause."""
        try:
            lines = self.log_path.read_text(errors="replace").splitlines()[1:]
        except OSError:
            return ""
        for line in lines:
            if _CAUSE.search(line) and "WARNING" not in line:
                return _LOG_PREFIX.sub("", line).strip()
        return self.log_tail()

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


#: Entry-point group of server launchers (how specbench starts a kind of server itself).
LAUNCHER_GROUP = "specbench.servers"


class ServerLauncher(ABC, Generic[LP]):
    """How specbench starts one kind of OpenAI-compatible server itself (``llama-server``,
    ``vllm serve``), registered in the entry-point group ``specbench.servers`` by the engine
    plugin that knows that server. The ``server`` method's ``launch`` table names one
    (``engine = "llama-server"``); its other keys are validated by ``Params``.

    * ``build(params, models, slots, log_path)``: the :class:`ServerProcess` to start, able
      to serve ``slots`` requests at once, with model paths from the preset's ``models``.
    * ``plain(params)``: the same server without speculation (the reference a speculative
      configuration is measured and audited against), or ``None`` if it is plain already.
    * ``request_fields(params)``: fields every request to this server carries (sampler
      settings that make its sampling the preset's).
    * ``version(server)``: what the records say of the running server's version.
    """

    name: ClassVar[str] = ""
    Params: ClassVar[type[MethodParams]] = MethodParams
    startup_timeout_s: ClassVar[float] = 300.0

    @abstractmethod
    def build(
        self, params: LP, models: ModelsSpec, slots: int, log_path: Path
    ) -> ServerProcess: ...

    @abstractmethod
    def plain(self, params: LP) -> LP | None: ...

    def request_fields(self, params: LP) -> dict[str, Any]:
        return {}

    def version(self, server: ServerProcess) -> str:
        return "unknown"


def server_launchers() -> LoadedGroup[ServerLauncher]:
    """Every launcher installed (``specbench.servers``), by name, and those that failed to
    load (with their error)."""
    return load_entry_points(LAUNCHER_GROUP, ServerLauncher)
