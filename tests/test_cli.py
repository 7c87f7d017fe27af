"""The specbench command line, end to end."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from presets_for_tests import write_fast_preset
from typer.testing import CliRunner

from specbench.cli.main import app
from specbench.records import SampleRecord, SummaryRecord, read_records

runner = CliRunner()


def invoke(*args: str):
    return runner.invoke(app, list(args))


def test_methods_lists_builtins_with_their_package() -> None:
    result = invoke("methods")
    assert result.exit_code == 0
    for text in ("baseline", "speculative", "specbench", "0.1.0", "target+draft"):
        assert text in result.output


def test_methods_shows_one_methods_parameters() -> None:
    result = invoke("methods", "speculative")
    assert result.exit_code == 0
    assert "Draft tokens proposed per target call" in result.output
    assert invoke("methods", "medusa").exit_code == 2


def test_presets_lists_and_shows() -> None:
    listing = invoke("presets")
    assert listing.exit_code == 0 and "quickstart" in listing.output
    shown = invoke("presets", "show", "quickstart")
    assert shown.exit_code == 0 and "[models.target]" in shown.output
    missing = invoke("presets", "show", "nope")
    assert missing.exit_code == 2 and "specbench presets" in missing.output


def test_validate_good_presets() -> None:
    result = invoke("validate")
    assert result.exit_code == 0
    assert "ok" in result.output and "quickstart.toml" in result.output


def test_validate_broken_preset_exits_2_with_path_and_fix(tmp_path: Path) -> None:
    path = tmp_path / "broken.toml"
    path.write_text(
        '[models.target]\nbackend = "toy"\n[[methods]]\nname = "speculative"\n'
        'params = { k = 0 }\n[prompts]\nsource = "inline"\nprompts = ["x"]\n'
    )
    result = invoke("validate", str(path))
    assert result.exit_code == 2
    assert (
        f"{path}: methods[0].params.k: Input should be greater than or equal to 1" in result.output
    )
    assert "needs a draft model" in result.output and "Fix:" in result.output


def test_run_writes_jsonl_and_prints_summary(tmp_path: Path) -> None:
    preset = write_fast_preset(tmp_path)
    out = tmp_path / "out.jsonl"
    result = invoke("run", "--preset", str(preset), "--output", str(out))
    assert result.exit_code == 0, result.output
    assert "speedup" in result.output and str(out) in result.output
    records = read_records(out)
    assert sum(isinstance(r, SampleRecord) for r in records) == 16
    assert sum(isinstance(r, SummaryRecord) for r in records) == 2


def test_run_flags_override_the_preset(tmp_path: Path) -> None:
    preset = write_fast_preset(tmp_path)
    out = tmp_path / "out.jsonl"
    result = invoke(
        "run",
        "-p",
        str(preset),
        "-o",
        str(out),
        "--quiet",
        "--runs",
        "1",
        "--limit",
        "2",
        "--max-new-tokens",
        "7",
        "--methods",
        "speculative",
        "--set",
        "methods.1.params.k=5",
    )
    assert result.exit_code == 0, result.output
    assert result.output.strip() == str(out)
    samples = [r for r in read_records(out) if isinstance(r, SampleRecord)]
    assert len(samples) == 2 and {s.method for s in samples} == {"speculative"}
    assert all(s.new_tokens == 7 for s in samples)
    assert max(len(s.position_verified) for s in samples) == 5


def test_run_with_broken_preset_exits_2(tmp_path: Path) -> None:
    preset = write_fast_preset(tmp_path)
    result = invoke("run", "-p", str(preset), "--temperature", "-1")
    assert result.exit_code == 2
    assert "sampling.temperature" in result.output
    assert invoke("run", "-p", "nonexistent").exit_code == 2


def test_report_reads_results(tmp_path: Path) -> None:
    preset = write_fast_preset(tmp_path)
    out = tmp_path / "out.jsonl"
    assert invoke("run", "-p", str(preset), "-o", str(out), "-q").exit_code == 0
    result = invoke("report", str(out))
    assert result.exit_code == 0
    assert "baseline" in result.output and "speculative" in result.output
    assert invoke("report", str(tmp_path / "missing.jsonl")).exit_code == 2


def test_example_plugin_runs_from_the_cli(tmp_path: Path) -> None:
    repo = Path(__file__).resolve().parent.parent
    preset = repo / "plugins" / "specbench-adaptive-k" / "adaptive.toml"
    out = tmp_path / "out.jsonl"
    result = invoke(
        "run",
        "-p",
        str(preset),
        "-o",
        str(out),
        "--runs",
        "1",
        "--set",
        "models.target.forward_ms=0",
    )
    assert result.exit_code == 0, result.output
    methods = {r.method for r in read_records(out) if isinstance(r, SampleRecord)}
    assert "adaptive-speculative" in methods


def _sample_lines(path: Path) -> int:
    if not path.exists():
        return 0
    return sum('"record":"sample"' in line for line in path.read_text().splitlines())


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")
def test_ctrl_c_keeps_records_and_resume_completes(tmp_path: Path) -> None:
    preset = write_fast_preset(tmp_path, forward_ms=5.0, max_new_tokens=40)
    out = tmp_path / "out.jsonl"
    command = [sys.executable, "-m", "specbench", "run", "-p", str(preset), "-o", str(out)]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    process = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
    )
    deadline = time.monotonic() + 60
    while _sample_lines(out) < 3 and time.monotonic() < deadline:
        time.sleep(0.05)
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 130, stderr
    assert "interrupted during" in stderr and "--resume" in stderr
    kept = _sample_lines(out)
    assert 3 <= kept < 16
    for line in out.read_text().splitlines():
        json.loads(line)  # every line is whole

    result = invoke("run", "-p", str(preset), "-o", str(out), "--resume")
    assert result.exit_code == 0, result.output
    assert f"resumed: {kept} samples" in result.output
    samples = [r for r in read_records(out) if isinstance(r, SampleRecord)]
    keys = [(s.method, s.prompt_id, s.run) for s in samples]
    assert len(keys) == len(set(keys)) == 16
