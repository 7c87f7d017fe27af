"""The ``server`` method.

Unmarked tests run in CI against ``fake_openai_server.py`` (OpenAI's streaming format,
vLLM's /metrics counters, and every fault by flag): load levels, the per-request and
per-level figures (percentiles recomputed from the recorded latencies), the counters, the
report, and each fault as one line with the sample recorded as failed and ``--resume``
sending only those again. Tests marked ``llamacpp`` start the real llama-server on a tiny
GGUF at concurrency 1 and 4; ``vllm`` ones start ``vllm serve`` (``nox -s vllm``).
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from specbench_serve.load import arrival_times
from typer.testing import CliRunner

from specbench.api import ServerProcess, SpecbenchError, free_port, parse_prometheus, spec_counters
from specbench.cli.main import app
from specbench.plugins import discover_methods
from specbench.presets.schema import load_preset
from specbench.records import SampleRecord, SummaryRecord, read_records
from specbench.report.results import load_results
from specbench.report.tables import serving_data
from specbench.run.runner import RunAborted, run_preset
from specbench.testing import process_alive, terminal_sigint

HERE = Path(__file__).parent

TOY_TARGET = """
[models.target]
backend = "toy"
vocab_size = 60
"""


def _get(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=5) as answer:
        return json.loads(answer.read())


@pytest.fixture
def fake_server() -> Iterator[Callable[..., str]]:
    """Start stand-in servers (flags as in fake_openai_server.py); each is stopped after."""
    started: list[subprocess.Popen[bytes]] = []

    def start(*flags: str, port: int | None = None) -> str:
        port = port or free_port()
        process = subprocess.Popen(
            [sys.executable, str(HERE / "fake_openai_server.py"), "--port", str(port), *flags],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        started.append(process)
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                _get(f"{url}/v1/models")
                return url
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("the stand-in server did not start")

    yield start
    for process in started:
        process.kill()
        process.wait()


def _preset(tmp_path: Path, methods: str, *, prompts: int = 6, tokens: int = 12,
            levels: str = "[1, 4]", warmup: int = 1, extra: str = "") -> Path:  # fmt: skip
    path = tmp_path / "serve.toml"
    inline = ", ".join(f'"prompt number {i}: tell me a story {"x " * i}"' for i in range(prompts))
    path.write_text(
        f'name = "serve-test"\n{TOY_TARGET}\n{methods}\n'
        f'[prompts]\nsource = "inline"\nprompts = [{inline}]\nchat_template = false\n'
        f"[sampling]\nmax_new_tokens = {tokens}\n"
        f"[runs]\nwarmup = {warmup}\nconcurrency = {levels}\n{extra}"
    )
    return path


def _server(label: str, url: str, **params: Any) -> str:
    fields = {"url": url, "extra_body": {"return_token_ids": True}, **params}
    inline = ", ".join(f"{k} = {json.dumps(v)}" for k, v in fields.items())
    inline = inline.replace('{"return_token_ids": true}', "{ return_token_ids = true }")
    return f'[[methods]]\nname = "server"\nlabel = "{label}"\nparams = {{ {inline} }}\n'


def _run(path: Path, output: Path, **kwargs: Any) -> Any:
    return run_preset(load_preset(str(path), discover_methods()), output, **kwargs)


def _samples(path: Path) -> list[SampleRecord]:
    return [r for r in read_records(path) if isinstance(r, SampleRecord)]


def _summaries(path: Path) -> dict[str, SummaryRecord]:
    return {r.method: r for r in read_records(path) if isinstance(r, SummaryRecord)}


def _overlap(samples: list[SampleRecord]) -> int:
    """The most requests the recorded send and end times say were in flight at once."""
    spans = []
    for s in samples:
        assert s.serving is not None
        request = s.serving.requests[0]
        spans.append((request.sent_s, request.sent_s + request.e2e_s))
    return max(sum(1 for a, b in spans if a <= t < b) for t, _ in spans)


# ----------------------------------------------------------------------------- load levels


def test_each_level_records_every_figure_and_the_percentiles_are_the_recorded_ones(
    tmp_path: Path, fake_server: Callable[..., str]
) -> None:
    url = fake_server("--spec", "3", "--token-delay", "0.01")
    out = tmp_path / "r.jsonl"
    _run(_preset(tmp_path, _server("spec", url)), out)
    samples = _samples(out)
    by_level = {
        label: [s for s in samples if s.method == label] for label in ("spec@c1", "spec@c4")
    }
    assert all(len(group) == 6 for group in by_level.values())
    assert _overlap(by_level["spec@c1"]) == 1
    assert _overlap(by_level["spec@c4"]) == 4
    for s in samples:
        assert s.serving is not None and s.error is None
        assert s.serving.prompt_as == "token_ids" and s.serving.api == "completions"
        request = s.serving.requests[0]
        assert (
            request.output_ids == "server" and request.usage_tokens == request.stream_tokens == 12
        )
        assert request.ttft_s is not None and 0 < request.ttft_s < request.e2e_s
        assert len(request.itl_s) == 11 and all(gap > 0 for gap in request.itl_s)
        assert request.tpot_s == pytest.approx((request.e2e_s - request.ttft_s) / 11)
        assert s.new_tokens == 12 and s.wall_s == pytest.approx(request.e2e_s)
    summaries = _summaries(out)
    for label, group in by_level.items():
        serving = summaries[label].serving
        assert serving is not None and serving.requests == 6 and serving.failed_requests == 0
        requests = [s.serving.requests[0] for s in group if s.serving]
        ttft = [r.ttft_s for r in requests if r.ttft_s is not None]
        itl = [gap for r in requests for gap in r.itl_s]
        for p in (50, 90, 99):
            assert serving.ttft_ms[f"p{p}"] == pytest.approx(1000 * np.percentile(ttft, p))
            assert serving.itl_ms[f"p{p}"] == pytest.approx(1000 * np.percentile(itl, p))
        wall = group[0].serving.level_wall_s if group[0].serving else 0
        assert serving.output_tokens_per_s == pytest.approx(72 / wall)
        # The stand-in counts 3 steps of 3 drafts per 12-token request, one of them with
        # its last draft rejected: the counters' change over the level, not the server's
        # lifetime (the warm-up request is not in it).
        assert serving.drafts == 18 and serving.draft_tokens == 54
        assert serving.accepted == 54 - 6
        assert serving.acceptance_length == pytest.approx(1 + 48 / 18)
        assert serving.position_marginal == pytest.approx([1.0, 1.0, 2 / 3])
        assert serving.position_conditional == pytest.approx([1.0, 1.0, 2 / 3])
    # Each sample carries its share of the level's counters (by its tokens): they add up.
    for group in by_level.values():
        assert sum(s.accepted for s in group) == 48 and sum(s.proposed for s in group) == 54


def test_the_report_shows_each_level_against_the_plain_server_and_where_it_stops_paying(
    tmp_path: Path, fake_server: Callable[..., str]
) -> None:
    plain = fake_server("--token-delay", "0.004")
    spec = fake_server("--spec", "3", "--burst", "4", "--token-delay", "0.004")
    methods = _server("plain", plain) + _server("spec", spec, plain_url=plain)
    out = tmp_path / "r.jsonl"
    _run(_preset(tmp_path, methods, extra="order = 'engines-last'\n"), out)
    samples = _samples(out)
    for s in samples:
        if s.method.startswith("spec@"):
            assert s.reference == s.method.replace("spec", "plain")
            assert s.matches_baseline is True  # both stand-ins answer alike
    result = load_results(out)
    table = serving_data(result)
    assert table is not None
    rows = {row[0]: row for row in table.rows}
    assert set(rows) == {"plain@c1", "plain@c4", "spec@c1", "spec@c4"}
    assert rows["plain@c1"][-1] == "-" and rows["spec@c4"][-1].endswith("x")
    assert rows["spec@c1"][2] == "6/0"
    assert "marginal" in table.caption


def test_poisson_arrivals_send_no_request_before_its_time(
    tmp_path: Path, fake_server: Callable[..., str]
) -> None:
    url = fake_server()
    out = tmp_path / "r.jsonl"
    path = _preset(tmp_path, _server("open", url, request_rate=40.0), levels="[8]")
    _run(path, out)
    samples = sorted(_samples(out), key=lambda s: s.prompt_index)
    expected = arrival_times(6, 40.0, samples[0].seed)
    sent = [s.serving.requests[0].sent_s for s in samples if s.serving]
    assert all(got >= want - 1e-3 for got, want in zip(sent, expected, strict=True))
    assert sent[-1] >= expected[-1] > 0.01  # the arrivals are spread, not all at once
    assert samples[0].serving is not None and samples[0].serving.request_rate == 40.0


def test_chat_sends_the_conversation_as_messages(
    tmp_path: Path, fake_server: Callable[..., str]
) -> None:
    url = fake_server()
    path = _preset(tmp_path, _server("chat", url, api="chat"), prompts=2, levels="[1]")
    text = path.read_text().replace("chat_template = false", 'system_prompt = "be brief"')
    path.write_text(text)
    _run(path, tmp_path / "r.jsonl")
    bodies = _get(f"{url}/debug/bodies")
    last = bodies[-1]
    assert last["messages"][0] == {"role": "system", "content": "be brief"}
    assert (
        last["messages"][1]["role"] == "user" and "prompt number" in last["messages"][1]["content"]
    )
    assert last["stream"] is True and last["max_tokens"] == 12 and "seed" in last
    samples = _samples(tmp_path / "r.jsonl")
    assert all(s.serving and s.serving.prompt_as == "text" for s in samples)


def test_a_server_that_refuses_token_ids_gets_text(
    tmp_path: Path, fake_server: Callable[..., str]
) -> None:
    url = fake_server("--reject-ids")
    messages: list[str] = []
    path = _preset(tmp_path, _server("text", url), prompts=2, levels="[1]")
    run_preset(
        load_preset(str(path), discover_methods()),
        tmp_path / "r.jsonl",
        on_progress=lambda p: messages.append(p.message),
    )
    assert any("refused token ids" in m for m in messages)
    samples = _samples(tmp_path / "r.jsonl")
    assert all(s.serving and s.serving.prompt_as == "text" and not s.error for s in samples)
    assert isinstance(_get(f"{url}/debug/bodies")[-1]["prompt"], str)


def test_a_server_without_token_ids_in_its_stream_is_retokenized_and_without_metrics_says_so(
    tmp_path: Path, fake_server: Callable[..., str]
) -> None:
    url = fake_server("--no-metrics")
    messages: list[str] = []
    method = f'[[methods]]\nname = "server"\nlabel = "s"\nparams = {{ url = "{url}" }}\n'
    run_preset(
        load_preset(str(_preset(tmp_path, method, levels="[1]")), discover_methods()),
        tmp_path / "r.jsonl",
        on_progress=lambda p: messages.append(p.message),
    )
    assert any("no speculative counters" in m for m in messages)
    sample = _samples(tmp_path / "r.jsonl")[0]
    assert sample.serving is not None and sample.serving.counters is None
    assert sample.serving.requests[0].output_ids == "retokenized"
    assert sample.serving.requests[0].usage_tokens == 12
    assert (
        sample.engine is not None
        and "no speculative counters" in sample.engine["options"]["metrics"]
    )


def test_counters_are_read_whatever_the_prefix_and_summed_over_label_sets() -> None:
    text = "\n".join(
        [
            "# TYPE llamacpp:spec_decode_num_drafts_total counter",
            "llamacpp:spec_decode_num_drafts_total 5",
            "# TYPE llamacpp:spec_decode_num_draft_tokens_total counter",
            "llamacpp:spec_decode_num_draft_tokens_total 15",
            "# TYPE llamacpp:spec_decode_num_accepted_tokens_total counter",
            "llamacpp:spec_decode_num_accepted_tokens_total 9",
            "# TYPE vllm:spec_decode_num_accepted_tokens_per_pos counter",
            'vllm:spec_decode_num_accepted_tokens_per_pos_total{engine="0",position="0"} 4',
            'vllm:spec_decode_num_accepted_tokens_per_pos_total{engine="1",position="0"} 1',
            'vllm:spec_decode_num_accepted_tokens_per_pos_total{engine="0",position="2"} 2',
        ]
    )
    counters = spec_counters(parse_prometheus(text + "\n"))
    assert counters is not None
    assert (counters.drafts, counters.draft_tokens, counters.accepted) == (5, 15, 9)
    assert counters.accepted_per_position == [5, 0, 2]
    assert spec_counters(parse_prometheus("# TYPE x counter\nx_total 1\n")) is None


def test_a_shared_server_starts_once_with_the_most_slots_and_stops_with_its_last_user() -> None:
    from specbench_serve import shared

    class User:
        pass

    class Stub(ServerProcess):
        def __init__(self, slots: int) -> None:
            super().__init__("stub", lambda port: [], Path("unused.log"))
            self.slots, self.started, self.stopped = slots, 0, 0

        def start(self, timeout_s: float, hint: str = "") -> None:
            self.started += 1

        def stop(self) -> None:
            self.stopped += 1

    first, second, dropped = User(), User(), User()
    shared.join("key", first, 1)
    shared.join("key", second, 4)
    shared.join("key", dropped, 2)
    del dropped  # built to be asked something, then dropped without close()
    server, fresh = shared.start("key", Stub, 1.0, "")
    again, fresh_again = shared.start("key", Stub, 1.0, "")
    assert isinstance(server, Stub) and fresh and not fresh_again and again is server
    assert server.slots == 4 and server.started == 1
    shared.leave("key", first)
    assert server.stopped == 0
    shared.leave("key", second)
    assert server.stopped == 1


# ----------------------------------------------------------------------------- presets


def test_levels_come_from_the_preset_or_the_flag_and_name_their_source(
    tmp_path: Path, fake_server: Callable[..., str]
) -> None:
    url = "http://127.0.0.1:9"
    path = _preset(tmp_path, _server("s", url) + _server("t", url, concurrency=2), levels="[1, 8]")
    resolved = load_preset(str(path), discover_methods())
    assert [m.label for m in resolved.methods] == ["s@c1", "s@c8", "t@c1", "t@c8"]
    assert [m.params.concurrency for m in resolved.methods] == [1, 8, 1, 8]  # type: ignore[attr-defined]
    runner = CliRunner()
    bad = runner.invoke(app, ["run", "-p", str(path), "--concurrency", "1,x"])
    assert bad.exit_code == 2 and "--concurrency '1,x'" in bad.output
    with pytest.raises(SpecbenchError, match=r"--concurrency 0: runs.concurrency"):
        load_preset(str(path), discover_methods(), [("runs.concurrency", [0], "--concurrency 0")])
    again = load_preset(str(path), discover_methods(), [("runs.concurrency", [2, 3])])
    assert [m.label for m in again.methods] == ["s@c2", "s@c3", "t@c2", "t@c3"]
    none = _preset(tmp_path, '[[methods]]\nname = "baseline"\n')
    refused = runner.invoke(app, ["validate", str(none)])
    assert (
        refused.exit_code == 2 and "no method of this preset takes a concurrency" in refused.output
    )
    neither = _preset(tmp_path, '[[methods]]\nname = "server"\nparams = { model = "m" }\n')
    both = runner.invoke(app, ["validate", str(neither)])
    assert both.exit_code == 2 and "exactly one of url and launch" in both.output


# ----------------------------------------------------------------------------- faults


def test_an_unreachable_server_is_one_line_naming_the_url(tmp_path: Path) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    path = _preset(tmp_path, _server("s", url), levels="[1]")
    result = CliRunner().invoke(app, ["run", "-p", str(path), "-o", str(tmp_path / "r.jsonl")])
    assert result.exit_code == 2
    lines = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and url in lines[0] and "not reachable" in lines[0]
    assert "Fix: start it, or check params.url" in lines[0]


@pytest.mark.parametrize(
    ("flags", "params", "expected"),
    [
        (("--status", "500"), {}, "the server answered 500: "),
        (("--status", "429"), {}, "the server answered 429: "),
        (("--cut-after", "3"), {}, "the stream was cut after 3 chunks"),
        (("--first-delay", "3"), {"request_timeout_s": 0.5}, "no complete answer within 0.5 s"),
    ],
)
def test_a_failing_request_is_recorded_as_failed_never_as_fast(
    tmp_path: Path,
    fake_server: Callable[..., str],
    flags: tuple[str, ...],
    params: dict[str, Any],
    expected: str,
) -> None:
    url = fake_server(*flags, "--fail-from", "1")  # the probe at the start gets through
    out = tmp_path / "r.jsonl"
    path = _preset(tmp_path, _server("s", url, **params), prompts=3, levels="[2]", warmup=0)
    result = CliRunner().invoke(app, ["run", "-p", str(path), "-o", str(out), "-q"])
    assert result.exit_code == 1, result.output
    errors = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert expected in errors[0] and "3 failed" in errors[0]
    assert "--resume" in errors[-1] and len(errors) == 2
    samples = _samples(out)
    assert len(samples) == 3
    for s in samples:
        assert s.error is not None and expected in s.error and "\n" not in s.error
        assert s.stop_reason == "error" and s.new_tokens == 0 and s.tokens_per_sec == 0.0
        assert s.serving is not None and s.serving.requests[0].error == s.error
    assert not _summaries(out)  # nothing finished: no figures


def test_a_level_with_some_failures_summarizes_the_rest_and_says_what_failed(
    tmp_path: Path, fake_server: Callable[..., str]
) -> None:
    url = fake_server("--status", "503", "--fail-from", "3")  # the probe and two answers
    out = tmp_path / "r.jsonl"
    path = _preset(tmp_path, _server("s", url), prompts=4, levels="[1]", warmup=0)
    result = CliRunner().invoke(app, ["run", "-p", str(path), "-o", str(out)])
    assert result.exit_code == 1
    assert "failed: the server answered 503" in result.output  # the live line
    assert "s@c1: 2 samples failed and are in no figure" in result.output
    summary = _summaries(out)["s@c1"]
    assert summary.samples == 2 and summary.failed == 2
    assert summary.serving is not None and summary.serving.requests == 2
    assert summary.serving.failed_requests == 2


def test_a_server_that_dies_mid_level_keeps_what_finished_and_resume_sends_only_the_rest(
    tmp_path: Path, fake_server: Callable[..., str]
) -> None:
    port = free_port()
    # Each level probes the server and warms up (4 requests), then c1 gets two answers.
    url = fake_server("--die-after", "6", port=port)
    out = tmp_path / "r.jsonl"
    path = _preset(tmp_path, _server("s", url), prompts=5, levels="[1, 2]")
    with pytest.raises(RunAborted) as aborted:
        _run(path, out)
    assert isinstance(aborted.value.cause, SpecbenchError)
    assert "not reachable" in aborted.value.cause.message
    assert "--resume" in (aborted.value.cause.hint or "")
    first = _samples(out)
    done = [s for s in first if s.error is None]
    failed = [s for s in first if s.error is not None]
    assert len(done) == 2 and len(failed) == 3 and {s.method for s in first} == {"s@c1"}
    assert all("cut" in (s.error or "") or "connect" in (s.error or "") for s in failed)
    fake_server(port=port)  # the server is back
    _run(path, out, resume=True)
    timed = [body for body in _get(f"{url}/debug/bodies") if body["max_tokens"] == 12]
    # The warm-ups of both levels, the three failed requests of c1 and all five of c2.
    assert len(timed) == 2 + 3 + 5
    final = _samples(out)
    assert len([s for s in final if s.error is None]) == 10
    summaries = _summaries(out)
    assert summaries["s@c1"].samples == 5 and summaries["s@c1"].failed == 0


def test_an_api_key_comes_from_the_named_variable(
    tmp_path: Path, fake_server: Callable[..., str], monkeypatch: pytest.MonkeyPatch
) -> None:
    url = fake_server()
    path = _preset(tmp_path, _server("s", url, api_key_env="SERVE_TEST_KEY"), levels="[1]")
    monkeypatch.delenv("SERVE_TEST_KEY", raising=False)
    result = CliRunner().invoke(app, ["run", "-p", str(path), "-o", str(tmp_path / "r.jsonl")])
    assert result.exit_code == 2 and "$SERVE_TEST_KEY, which is not set" in result.output
    monkeypatch.setenv("SERVE_TEST_KEY", "secret")
    _run(path, tmp_path / "r2.jsonl")
    assert len(_samples(tmp_path / "r2.jsonl")) == 6


# ----------------------------------------------------------------------------- real servers


@pytest.fixture(scope="module")
def tiny_gguf(tmp_path_factory: pytest.TempPathFactory) -> Path:
    pytest.importorskip("gguf")
    pytest.importorskip("transformers")
    from hf_fixtures import tiny_gguf_folder

    return tiny_gguf_folder(tmp_path_factory.mktemp("tiny-gguf"))


@pytest.fixture(scope="module")
def llama_server() -> Path:
    from specbench_llamacpp.server import find_server

    try:
        return find_server(None)
    except SpecbenchError as error:
        pytest.skip(f"{error.message}: {error.hint}")


def _llama_preset(tmp_path: Path, folder: Path, server: Path, *, temperature: float = 0.0,
                  tokens: int = 16, levels: str = "[1, 4]") -> Path:  # fmt: skip
    launch = f'engine = "llama-server", server = "{server}", threads = 1'
    path = tmp_path / "llama-serve.toml"
    path.write_text(
        f"""
name = "llama-serve"
[models.target]
backend = "hf"
model = "{folder}"
gguf_file = "tiny.gguf"
dtype = "float32"
[models.draft]
backend = "hf"
model = "{folder}"
gguf_file = "tiny.gguf"
dtype = "float32"
[[methods]]
name = "server"
label = "plain"
params = {{ launch = {{ {launch} }} }}
[[methods]]
name = "server"
label = "draft"
params = {{ launch = {{ {launch}, draft = true, draft_max = 3 }} }}
[prompts]
source = "inline"
prompts = ["def add(a, b):", "hello there, how are you", "count: 1 2 3 4 5 6", "the quick"]
chat_template = false
[sampling]
temperature = {temperature}
max_new_tokens = {tokens}
[runs]
warmup = 1
concurrency = {levels}
order = "engines-last"
baseline = "plain"
"""
    )
    return path


@pytest.mark.llamacpp
def test_real_llama_server_at_concurrency_1_and_4_gives_every_figure(
    tmp_path: Path, tiny_gguf: Path, llama_server: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from specbench_serve import shared

    started: list[Any] = []
    original = shared.start

    def start(*args: Any, **kwargs: Any) -> Any:
        server, fresh = original(*args, **kwargs)
        if fresh:
            started.append(server)
        return server, fresh

    monkeypatch.setattr(shared, "start", start)
    out = tmp_path / "r.jsonl"
    _run(_llama_preset(tmp_path, tiny_gguf, llama_server), out)
    # One server per configuration, kept up across its levels, stopped at the end.
    assert len(started) == 2
    assert not any(process_alive(server.process.pid) for server in started)
    assert sorted(p.name for p in tmp_path.glob("r.*.log")) == [
        "r.draft@c1.llama-server.log",
        "r.plain@c1.llama-server.log",
    ]
    samples = _samples(out)
    assert {s.method for s in samples} == {"plain@c1", "plain@c4", "draft@c1", "draft@c4"}
    for s in samples:
        assert s.error is None and s.serving is not None and s.new_tokens > 0
        request = s.serving.requests[0]
        assert request.ttft_s is not None and request.tpot_s is not None
        assert request.usage_tokens is not None and request.itl_s
        assert s.engine is not None and s.engine["name"] == "llama-server"
        if s.method.startswith("draft"):
            assert s.reference == s.method.replace("draft", "plain")
            assert s.matches_baseline is True  # greedy, the draft is the target itself
    assert _overlap([s for s in samples if s.method == "plain@c4"]) == 4
    summaries = _summaries(out)
    for level in ("c1", "c4"):
        serving = summaries[f"draft@{level}"].serving
        assert serving is not None and serving.requests == 4
        # The draft is the target: every drafted token is accepted.
        assert serving.drafts and serving.accepted == serving.draft_tokens > 0
        assert serving.position_marginal and serving.position_marginal[0] == 1.0
        plain = summaries[f"plain@{level}"].serving
        assert plain is not None and not plain.drafts and plain.tpot_ms["p50"] > 0
    table = serving_data(load_results(out))
    assert table is not None and len(table.rows) == 4


@pytest.mark.llamacpp
def test_real_llama_server_pair_passes_the_greedy_and_sampling_audits(
    tmp_path: Path, tiny_gguf: Path, llama_server: Path
) -> None:
    runner = CliRunner()
    greedy = _llama_preset(tmp_path, tiny_gguf, llama_server)
    result = runner.invoke(
        app, ["audit", "-p", str(greedy), "-o", str(tmp_path / "g.jsonl"), "--prompts", "2"]
    )
    assert result.exit_code == 0, result.output
    assert "not audited one by one" in result.output
    sampling = _llama_preset(tmp_path, tiny_gguf, llama_server, temperature=1.0, tokens=3)
    out = tmp_path / "s.jsonl"
    result = runner.invoke(
        app, ["audit", "-p", str(sampling), "-o", str(out), "--samples", "300", "--prompts", "1"]
    )
    assert result.exit_code == 0, result.output
    records = {r.method: r for r in read_records(out) if r.record == "audit"}  # type: ignore[union-attr]
    assert set(records) == {"plain@c1", "draft@c1"}
    assert records["plain@c1"].verdict == "reference"  # type: ignore[union-attr]
    assert records["draft@c1"].verdict == "pass"  # type: ignore[union-attr]
    assert "two-sample" in records["draft@c1"].test  # type: ignore[union-attr]


@pytest.mark.vllm
def test_real_vllm_serve_plain_and_ngram_at_two_levels(tmp_path: Path) -> None:
    pytest.importorskip("vllm")
    from hf_fixtures import build_model, build_tokenizer, save

    tokenizer = build_tokenizer()
    target = save(build_model("llama", len(tokenizer), seed=0, heads=2), tokenizer,
                  tmp_path / "target")  # fmt: skip
    common = 'engine = "vllm", dtype = "float32", max_model_len = 512, kv_cache_space_gib = 1'
    ngram = '{ method = "ngram", num_speculative_tokens = 3, prompt_lookup_max = 2, prompt_lookup_min = 1 }'
    path = tmp_path / "vllm-serve.toml"
    path.write_text(
        f"""
name = "vllm-serve"
[models.target]
backend = "hf"
model = "{target}"
[[methods]]
name = "server"
label = "vllm"
params = {{ launch = {{ {common} }}, extra_body = {{ return_token_ids = true }} }}
[[methods]]
name = "server"
label = "vllm-ngram"
params = {{ launch = {{ {common}, speculative = {ngram} }}, extra_body = {{ return_token_ids = true }} }}
[prompts]
source = "inline"
prompts = ["def add(a, b):", "count: 1 2 3 1 2 3 1 2", "hello there, how are you", "1 2 1 2 1 2"]
chat_template = false
[sampling]
max_new_tokens = 16
[runs]
warmup = 1
concurrency = [1, 2]
order = "engines-last"
baseline = "vllm"
"""
    )
    out = tmp_path / "r.jsonl"
    _run(path, out)
    samples = _samples(out)
    assert {s.method for s in samples} == {"vllm@c1", "vllm@c2", "vllm-ngram@c1", "vllm-ngram@c2"}
    for s in samples:
        assert s.error is None and s.serving is not None and s.new_tokens > 0
        request = s.serving.requests[0]
        assert request.output_ids == "server" and request.usage_tokens == request.stream_tokens
        assert request.ttft_s is not None and s.serving.prompt_as == "token_ids"
        if s.method.startswith("vllm-ngram"):
            assert s.matches_baseline is True
    summaries = _summaries(out)
    for level in ("c1", "c2"):
        serving = summaries[f"vllm-ngram@{level}"].serving
        assert serving is not None and serving.drafts and serving.draft_tokens
        assert serving.position_marginal
    assert sorted(p.name for p in tmp_path.glob("r.*.log")) == [
        "r.vllm-ngram@c1.vllm.log",
        "r.vllm@c1.vllm.log",
    ]


def test_ctrl_c_mid_level_keeps_the_finished_requests_and_resume_sends_the_rest(
    tmp_path: Path, fake_server: Callable[..., str]
) -> None:
    url = fake_server("--token-delay", "0.1")  # a 12-token answer takes 1.2 s
    out = tmp_path / "r.jsonl"
    path = _preset(tmp_path, _server("s", url), prompts=8, levels="[2]", warmup=0)
    entry = "import sys; from specbench.cli.entry import main; sys.exit(main())"
    command = [sys.executable, "-c", entry, "run", "-p", str(path), "-o", str(out), "-q"]
    run = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, preexec_fn=terminal_sigint
    )
    deadline = time.monotonic() + 60
    while _get(f"{url}/debug/state")["done"] < 4 and time.monotonic() < deadline:
        time.sleep(0.05)
    run.send_signal(signal.SIGINT)
    output = run.communicate(timeout=60)[0].decode()
    assert run.returncode == 130, output
    assert "continue with:" in output and "--resume" in output
    first = _samples(out)
    done = [s for s in first if s.error is None]
    assert len(done) >= 3 and len(first) == 8  # the probe was request 0 of "done"
    assert all("interrupted (Ctrl-C)" in (s.error or "") for s in first if s.error)
    assert all(s.serving and s.serving.requests[0].ttft_s for s in done)

    def timed() -> int:
        return len([b for b in _get(f"{url}/debug/bodies") if b["max_tokens"] == 12])

    before = timed()
    _run(path, out, resume=True)
    final = _samples(out)
    assert len([s for s in final if s.error is None]) == 8
    assert timed() - before == 8 - len(done)  # the resume sent only what had not finished
