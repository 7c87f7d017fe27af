"""ServerProcess: the one-line error of a server that dies while starting names the cause
from its log (not the shutdown noise after it), and a stopped server leaves no process."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from specbench.errors import SpecbenchError
from specbench.methods.server_process import ServerProcess
from specbench.testing import process_alive

DYING = """
print("INFO 12-05 00:50:17 [api_utils.py:286] starting", flush=True)
print("WARNING 12-05 00:50:17 [x.py:1] failed to raise the limit with error: too low")
print("(EngineCore pid=7) ERROR 12-05 00:50:51 [multiproc_executor.py:315] Worker proc "
      "VllmWorker-0 died unexpectedly (exit code: -9), shutting down executor.")
print("(EngineCore pid=7) ERROR 12-05 00:50:51 [core.py:1512] RuntimeError: Executor failed.")
print("nanobind: leaked 4 instances!")
"""

SERVING = "import time\nprint('up', flush=True)\ntime.sleep(60)\n"


def _script(tmp_path: Path, text: str) -> list[str]:
    path = tmp_path / "server.py"
    path.write_text(text)
    return [sys.executable, str(path)]


def test_a_server_dying_at_start_names_the_first_cause_in_its_log(tmp_path: Path) -> None:
    command = _script(tmp_path, DYING)
    server = ServerProcess("vllm serve", lambda port: command, tmp_path / "s.log")
    with pytest.raises(SpecbenchError) as error:
        server.start(timeout_s=30)
    message = error.value.message
    assert message.startswith("vllm serve exited with code 0 while starting: Worker proc")
    assert "died unexpectedly (exit code: -9)" in message and "lack of memory" in message
    assert "leaked" not in message and "s.log" in (error.value.hint or "")


def test_a_server_that_never_answers_is_stopped_after_its_timeout(tmp_path: Path) -> None:
    command = _script(tmp_path, SERVING)
    server = ServerProcess("stub", lambda port: command, tmp_path / "l")
    with pytest.raises(SpecbenchError, match="did not become healthy within 1 s"):
        server.start(timeout_s=1)
    assert server.process is not None and not process_alive(server.process.pid)
