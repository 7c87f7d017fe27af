"""Distributed runs on a local Ray cluster (loopback only, bounded in time).

The merged file must hold every sample exactly once with the same tokens as a local run of
the same seeds; a worker that dies mid-shard is retried; a killed driver resumes with no
duplicates.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ray = pytest.importorskip("ray")

from ray_crash import CrashAfter, ship_by_value  # noqa: E402

from specbench.plugins import discover_methods  # noqa: E402
from specbench.presets.schema import load_preset  # noqa: E402
from specbench.records import RunHeader, SampleRecord, SummaryRecord, read_records  # noqa: E402
from specbench.run.distributed import plan_shards, run_distributed  # noqa: E402
from specbench.run.runner import run_preset  # noqa: E402

PRESET = """
[models.target]
backend = "toy"
vocab_size = 32
order = 1
seed = 3
forward_ms = {forward_ms}
[models.draft]
backend = "toy"
vocab_size = 32
order = 1
seed = 3
distance = 0.7
[[methods]]
name = "baseline"
[[methods]]
name = "speculative"
params = {{ k = 3 }}
[prompts]
source = "inline"
prompts = ["aa", "bb", "cc", "dd", "ee", "ff"]
[sampling]
temperature = 0.8
max_new_tokens = 24
[runs]
count = 2
warmup = 1
[cluster]
workers = 2
num_cpus = 1
"""


@pytest.fixture(scope="module")
def cluster() -> object:
    ray.init(
        num_cpus=2,
        include_dashboard=False,
        logging_level="ERROR",
        log_to_driver=False,
        _node_ip_address="127.0.0.1",
    )
    yield ray.get_runtime_context().gcs_address
    ray.shutdown()


def _preset(tmp_path: Path, forward_ms: float = 0.0) -> Path:
    path = tmp_path / "dist.toml"
    path.write_text(PRESET.format(forward_ms=forward_ms))
    return path


def _samples(path: Path) -> list[SampleRecord]:
    return [r for r in read_records(path) if isinstance(r, SampleRecord)]


def test_shards_deal_prompts_round_robin() -> None:
    from specbench.prompts.prompt import Prompt

    prompts = [Prompt(str(i), ("x",)) for i in range(5)]
    assert plan_shards(prompts, 2) == [["0", "2", "4"], ["1", "3"]]
    assert plan_shards(prompts[:1], 4) == [["0"]]


def test_a_sharded_run_equals_a_local_run(cluster: object, tmp_path: Path) -> None:
    resolved = load_preset(str(_preset(tmp_path)), discover_methods())
    distributed = run_distributed(resolved, "auto", output=tmp_path / "ray.jsonl")
    local = run_preset(resolved, output=tmp_path / "local.jsonl")
    ours, theirs = _samples(distributed.output), _samples(local.output)
    keys = [(s.method, s.prompt_id, s.run) for s in ours]
    assert len(keys) == len(set(keys)) == 6 * 2 * 2
    expected = {(s.method, s.prompt_id, s.run): s.output_sha for s in theirs}
    assert {(s.method, s.prompt_id, s.run): s.output_sha for s in ours} == expected
    workers = {s.worker.split("@")[0] for s in ours if s.worker}
    assert workers == {"shard0", "shard1"}
    headers = [r for r in read_records(distributed.output) if isinstance(r, RunHeader)]
    assert len(headers) == 2 and all(h.worker for h in headers)
    summaries = {s.method: s for s in distributed.summaries}
    assert summaries["speculative"].speedup is not None and summaries["speculative"].samples == 12


def test_a_worker_that_dies_is_retried_and_nothing_is_lost(cluster: object, tmp_path: Path) -> None:
    marker = tmp_path / "crashed"
    ship_by_value()
    resolved = load_preset(str(_preset(tmp_path)), discover_methods())
    crash = CrashAfter(3, str(marker))
    outcome = run_distributed(resolved, "auto", output=tmp_path / "retry.jsonl", after_sample=crash)
    assert marker.exists()  # a worker really died
    keys = [(s.method, s.prompt_id, s.run) for s in _samples(outcome.output)]
    assert len(keys) == len(set(keys)) == 24
    headers = [r for r in read_records(outcome.output) if isinstance(r, RunHeader)]
    assert len(headers) == 3  # two shards and the retry
    assert any(isinstance(r, SummaryRecord) for r in read_records(outcome.output))


def test_a_killed_driver_resumes_without_duplicates(cluster: object, tmp_path: Path) -> None:
    preset = _preset(tmp_path, forward_ms=30.0)
    out = tmp_path / "killed.jsonl"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    command = [sys.executable, "-m", "specbench", "run", "-p", str(preset), "-o", str(out)]
    process = subprocess.Popen(
        [*command, "--ray", str(cluster), "-q"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if out.exists() and out.read_text().count('"record":"sample"') >= 4:
            break
        if process.poll() is not None:
            pytest.fail(f"the driver ended early: {process.stderr.read().decode()[-2000:]}")
        time.sleep(0.1)
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=30)
    kept = len(_samples(out))
    assert 4 <= kept < 24
    resolved = load_preset(str(preset), discover_methods())
    outcome = run_distributed(resolved, "auto", output=out, resume=True)
    keys = [(s.method, s.prompt_id, s.run) for s in _samples(out)]
    assert len(keys) == len(set(keys)) == 24
    assert outcome.written == 24 - kept


def test_ray_missing_is_a_one_line_error(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from specbench.cli.main import app

    monkeypatch.setitem(sys.modules, "ray", None)
    result = CliRunner().invoke(app, ["run", "-p", str(_preset(tmp_path)), "--ray", "local"])
    assert result.exit_code == 2
    assert "--ray needs Ray, which is not installed" in result.output
    assert 'pip install -c constraints/cpu.txt -e ".[ray]"' in result.output


def _session_bookkeeping(path: Path) -> tuple[list[int], list[int]]:
    from specbench.records import RunEnd

    records = read_records(path)
    return (
        sorted(r.session for r in records if isinstance(r, RunHeader)),
        sorted(r.session for r in records if isinstance(r, RunEnd)),
    )


def test_an_interrupted_and_resumed_ray_run_closes_every_session_it_opened(
    cluster: object, tmp_path: Path
) -> None:
    """Every header gets one end and no end names a session no header opened: after Ctrl-C
    (the open worker sessions end as interrupted) and after the resume."""
    from specbench.run.runner import RunAborted

    resolved = load_preset(str(_preset(tmp_path, forward_ms=20.0)), discover_methods())
    out = tmp_path / "stopped.jsonl"
    seen = {"n": 0}

    def stop_after_three(progress) -> None:  # type: ignore[no-untyped-def]
        if progress.last is not None:
            seen["n"] += 1
            if seen["n"] == 3:
                raise KeyboardInterrupt

    with pytest.raises(RunAborted):
        run_distributed(resolved, "auto", output=out, on_progress=stop_after_three)
    headers, ends = _session_bookkeeping(out)
    assert headers and headers == ends
    run_distributed(resolved, "auto", output=out, resume=True)
    headers, ends = _session_bookkeeping(out)
    assert headers == ends and len(set(headers)) == len(headers)
    keys = [(s.method, s.prompt_id, s.run) for s in _samples(out)]
    assert len(keys) == len(set(keys)) == 24


def test_a_retried_shard_ends_the_dead_workers_session(cluster: object, tmp_path: Path) -> None:
    ship_by_value()
    resolved = load_preset(str(_preset(tmp_path)), discover_methods())
    crash = CrashAfter(3, str(tmp_path / "crashed"))
    outcome = run_distributed(resolved, "auto", output=tmp_path / "retry.jsonl", after_sample=crash)
    headers, ends = _session_bookkeeping(outcome.output)
    assert headers == ends == [1, 2, 3]
