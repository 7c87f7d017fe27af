"""External engines and model backends as plugins: engine-only runs load no weights, every
engine row is compared with the engine's own plain decoding, engines are closed on every
exit, and a third-party backend is validated and loaded like a built-in one."""

from __future__ import annotations

from pathlib import Path

import pytest
from engine_plugins import CLOSED, ENTRY_POINTS, LOADS
from helpers import fake_distribution

from specbench.errors import ModelLoadError, SpecbenchError
from specbench.methods.external_engines import (
    SpecCounters,
    counter_stats,
    gguf_path,
    parse_prometheus,
    per_position,
)
from specbench.models.backends import discover_backends
from specbench.models.specs import HFModelSpec, ToyModelSpec
from specbench.plugins import discover_methods
from specbench.presets.schema import PresetError, load_preset
from specbench.records import SampleRecord, SummaryRecord, read_records
from specbench.report.tables import summary_data
from specbench.run.runner import RunAborted, run_preset

PRESET = """
name = "engines-toy"

[models.target]
backend = "counting"
vocab_size = 24
seed = 5

{methods}

[prompts]
source = "inline"
prompts = ["abc", "hello there", "xyz"]

[sampling]
temperature = 0.0
max_new_tokens = 12

[runs]
baseline = "{baseline}"
warmup = 1
"""


@pytest.fixture
def engine_plugins(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = tmp_path / "site"
    fake_distribution(root, "specbench-fake-engines", ENTRY_POINTS)
    monkeypatch.syspath_prepend(str(root))
    discover_methods(refresh=True)
    discover_backends(refresh=True)
    LOADS.clear()
    CLOSED.clear()


def _preset(tmp_path: Path, methods: list[str], baseline: str) -> Path:
    body = "\n".join(f"[[methods]]\n{m}\n" for m in methods)
    path = tmp_path / "engines.toml"
    path.write_text(PRESET.format(methods=body, baseline=baseline))
    return path


ENGINE_ROWS = [
    'name = "fake-remote"\nlabel = "plain"',
    'name = "fake-remote"\nlabel = "spec"\nparams = { speculative = true }',
    'name = "fake-remote"\nlabel = "drift"\nparams = { speculative = true, diverge = true }',
]


@pytest.mark.usefixtures("engine_plugins")
def test_engine_only_run_loads_no_model_and_compares_within_the_engine(tmp_path: Path) -> None:
    path = _preset(tmp_path, ENGINE_ROWS, baseline="plain")
    outcome = run_preset(load_preset(str(path), discover_methods()), tmp_path / "out.jsonl")
    assert LOADS == []  # only the tokenizer was loaded: the engine holds the model
    assert sorted(CLOSED) == ["drift", "plain", "spec"]
    records = read_records(outcome.output)
    samples = [r for r in records if isinstance(r, SampleRecord)]
    assert {s.reference for s in samples} == {"plain"}
    assert all(s.engine == {"name": "fake", "version": "1.0", "options": s.engine["options"]}
               for s in samples)  # fmt: skip
    by_method = {s.method: s for s in samples if s.prompt_index == 1}
    assert by_method["spec"].matches_baseline is True
    assert by_method["drift"].matches_baseline is False
    assert by_method["plain"].matches_baseline is None  # the reference itself
    spec = by_method["spec"]
    assert spec.accepted + spec.target_calls == spec.new_tokens
    summaries = {s.method: s for s in records if isinstance(s, SummaryRecord)}
    assert summaries["spec"].reference == "plain"
    assert summaries["spec"].engine == "fake 1.0"
    assert summaries["spec"].reference_speedup == pytest.approx(summaries["spec"].speedup)
    assert summaries["drift"].greedy_match_rate == 0.0


@pytest.mark.usefixtures("engine_plugins")
def test_engine_rows_beside_specbench_get_their_own_speedup_column(tmp_path: Path) -> None:
    rows = ['name = "baseline"', *ENGINE_ROWS]
    path = _preset(tmp_path, rows, baseline="baseline")
    outcome = run_preset(load_preset(str(path), discover_methods()), tmp_path / "out.jsonl")
    assert LOADS == ["target"]  # specbench's baseline needs the in-process target
    summaries = {s.method: s for s in outcome.summaries}
    assert summaries["spec"].baseline == "baseline" and summaries["spec"].reference == "plain"
    assert summaries["baseline"].reference == "baseline"
    table = summary_data(outcome.summaries)
    assert "own speedup" in table.columns and "engine" in table.columns
    cells = {row[0]: dict(zip(table.columns, row, strict=True)) for row in table.rows}
    assert cells["spec"]["own speedup"].endswith("vs plain")
    assert cells["plain"]["own speedup"] == "reference"
    assert cells["baseline"]["engine"] == "specbench"
    assert cells["spec"]["engine"] == "fake 1.0"


@pytest.mark.usefixtures("engine_plugins")
def test_a_missing_own_baseline_is_noted_and_engines_close_after_a_crash(tmp_path: Path) -> None:
    rows = ['name = "fake-remote"\nlabel = "spec"\nparams = { speculative = true, fail_at = 2 }']
    path = _preset(tmp_path, rows, baseline="spec")
    messages: list[str] = []
    with pytest.raises(RunAborted) as aborted:
        run_preset(
            load_preset(str(path), discover_methods()),
            tmp_path / "out.jsonl",
            on_progress=lambda p: messages.append(p.message),
        )
    assert "the engine crashed" in str(aborted.value)
    assert CLOSED == ["spec"]
    assert any("has no plain-decoding row of its own" in m for m in messages)
    samples = [r for r in read_records(tmp_path / "out.jsonl") if isinstance(r, SampleRecord)]
    assert len(samples) == 1  # warm-up, then one sample, then the crash: nothing lost


@pytest.mark.usefixtures("engine_plugins")
def test_a_backend_plugin_is_validated_by_its_own_spec(tmp_path: Path) -> None:
    path = _preset(tmp_path, ['name = "baseline"'], baseline="baseline")
    path.write_text(path.read_text().replace("seed = 5", "seed = 5\nsead = 1"))
    with pytest.raises(PresetError) as error:
        load_preset(str(path), discover_methods())
    assert "models.target.sead" in str(error.value)
    assert "allowed here: backend, seed, vocab_size" in str(error.value)


def test_an_unknown_backend_names_the_installed_ones(tmp_path: Path) -> None:
    path = tmp_path / "p.toml"
    path.write_text(PRESET.format(methods='[[methods]]\nname = "baseline"', baseline="baseline"))
    with pytest.raises(PresetError) as error:
        load_preset(str(path), discover_methods())
    assert "unknown backend 'counting' (installed: dummy, hf, toy)" in str(error.value)


# ----------------------------------------------------------------------------- shared helpers


def test_counter_changes_become_decode_stats() -> None:
    before = SpecCounters(drafts=3, draft_tokens=12, accepted=5, accepted_per_position=[3, 2])
    before.target_calls = 10
    after = SpecCounters(10, 40, 25, [9, 7, 5, 4, 0], target_calls=30)
    change = after.minus(before)
    assert change == SpecCounters(7, 28, 20, [6, 5, 5, 4, 0], target_calls=20)
    stats = counter_stats(change, new_tokens=40)
    assert (stats.target_calls, stats.steps, stats.proposed, stats.accepted) == (20, 20, 28, 20)
    # Position i > 0 is reached when i - 1 was accepted; trailing zeros are dropped.
    assert stats.position_verified == [7, 6, 5, 5]
    assert stats.position_accepted == [6, 5, 5, 4]
    assert stats.extra["drafting_steps"] == 7.0
    # Without a call count: one call per token not accepted from a draft.
    assert counter_stats(SpecCounters(2, 6, 4, [2, 2]), new_tokens=10).target_calls == 6
    plain = counter_stats(SpecCounters(), new_tokens=9)
    assert plain.target_calls == 9 and plain.position_verified == []


def test_prometheus_text_is_parsed_with_labels() -> None:
    text = """
# HELP llamacpp:n_decode_total Total number of llama_decode() calls
# TYPE llamacpp:n_decode_total counter
llamacpp:n_decode_total 42
llamacpp:spec_decode_num_accepted_tokens_per_pos_total{position="1"} 3
llamacpp:spec_decode_num_accepted_tokens_per_pos_total{position="0"} 7
"""
    metrics = parse_prometheus(text)
    assert metrics["llamacpp:n_decode_total"] == [({}, 42.0)]
    per_pos = metrics["llamacpp:spec_decode_num_accepted_tokens_per_pos_total"]
    assert per_position(per_pos) == [7, 3]
    with pytest.raises(SpecbenchError, match=r"/metrics is not Prometheus text"):
        parse_prometheus(text + "a line without a value\n")


def test_gguf_paths_of_model_specs(tmp_path: Path) -> None:
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "a.gguf").write_bytes(b"GGUF")
    assert gguf_path(HFModelSpec(model=str(folder)), "target") == folder / "a.gguf"
    assert gguf_path(HFModelSpec(model=str(folder / "a.gguf")), "target") == folder / "a.gguf"
    (folder / "b.gguf").write_bytes(b"GGUF")
    with pytest.raises(ModelLoadError, match=r"holds 2 \.gguf files and gguf_file is not set"):
        gguf_path(HFModelSpec(model=str(folder)), "target")
    assert gguf_path(HFModelSpec(model=str(folder), gguf_file="b.gguf"), "draft").name == "b.gguf"
    with pytest.raises(
        ModelLoadError, match="a GGUF engine needs a Hugging Face model or GGUF, not backend toy"
    ):
        gguf_path(ToyModelSpec(), "target")
    with pytest.raises(ModelLoadError, match="is not a GGUF model"):
        gguf_path(HFModelSpec(model="org/not-gguf"), "target")
    pytest.importorskip("huggingface_hub")
    with pytest.raises(ModelLoadError, match="is not in the hub cache"):
        gguf_path(HFModelSpec(model="org/absent", gguf_file="m.gguf"), "target")


@pytest.mark.usefixtures("engine_plugins")
def test_method_order_runs_one_engine_at_a_time(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import engine_plugins

    events: list[str] = []
    original_prepare = engine_plugins.FakeRemoteMethod.prepare
    original_generate = engine_plugins.FakeRemoteMethod.generate

    def prepare(self: object, context: object) -> None:
        events.append(f"prepare {context.label}")  # type: ignore[attr-defined]
        original_prepare(self, context)  # type: ignore[arg-type]

    def generate(self: object, request: object) -> object:
        events.append(f"generate {self.label}")  # type: ignore[attr-defined]
        return original_generate(self, request)  # type: ignore[arg-type]

    monkeypatch.setattr(engine_plugins.FakeRemoteMethod, "prepare", prepare)
    monkeypatch.setattr(engine_plugins.FakeRemoteMethod, "generate", generate)
    path = _preset(tmp_path, ENGINE_ROWS, baseline="plain")
    path.write_text(path.read_text().replace("warmup = 1", 'warmup = 1\norder = "method"'))
    outcome = run_preset(load_preset(str(path), discover_methods()), tmp_path / "out.jsonl")
    per_engine = ["generate"] * 4  # a warm-up and three prompts
    expected = []
    for label in ("plain", "spec", "drift"):
        expected += [f"prepare {label}"] + [f"{e} {label}" for e in per_engine]
    assert events == expected
    assert CLOSED == ["plain", "spec", "drift"]  # each closed before the next starts
    spec = {s.method: s for s in outcome.summaries}["spec"]
    assert spec.greedy_match_rate == 1.0 and spec.reference == "plain"


@pytest.mark.usefixtures("engine_plugins")
def test_engines_last_interleaves_in_process_rows_and_runs_engines_one_at_a_time(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """In-process rows decode prompt by prompt (a drifting machine hits them alike), then
    each engine prepares, decodes all prompts and closes before the next starts."""
    import engine_plugins

    events: list[str] = []
    original_prepare = engine_plugins.FakeRemoteMethod.prepare

    def prepare(self: object, context: object) -> None:
        events.append(f"prepare {context.label}")  # type: ignore[attr-defined]
        original_prepare(self, context)  # type: ignore[arg-type]

    monkeypatch.setattr(engine_plugins.FakeRemoteMethod, "prepare", prepare)
    rows = ['name = "baseline"', 'name = "prompt-lookup"\nparams = { k = 2 }', *ENGINE_ROWS[:2]]
    path = _preset(tmp_path, rows, baseline="baseline")
    path.write_text(path.read_text().replace("warmup = 1", 'warmup = 1\norder = "engines-last"'))
    outcome = run_preset(load_preset(str(path), discover_methods()), tmp_path / "out.jsonl")
    order = [
        (r.method, r.prompt_index)
        for r in read_records(outcome.output)
        if isinstance(r, SampleRecord)
    ]
    in_process = [(m, i) for m, i in order if m in ("baseline", "prompt-lookup")]
    assert in_process == [(m, i) for i in range(3) for m in ("baseline", "prompt-lookup")]
    assert order[: len(in_process)] == in_process  # the engines come after
    assert order[len(in_process) :] == [(m, i) for m in ("plain", "spec") for i in range(3)]
    assert events == ["prepare plain", "prepare spec"] and CLOSED == ["plain", "spec"]


@pytest.mark.usefixtures("engine_plugins")
def test_audit_compares_engine_rows_with_their_own_plain_decoding(tmp_path: Path) -> None:
    from specbench.audit.run import AuditOptions, audit_preset

    path = _preset(tmp_path, ENGINE_ROWS, baseline="plain")
    path.write_text(path.read_text().replace("warmup = 1", 'warmup = 1\norder = "method"'))
    resolved = load_preset(str(path), discover_methods())
    outcome = audit_preset(resolved, AuditOptions(prompts=3), tmp_path / "audit.jsonl")
    verdicts = {r.method: r for r in outcome.records}
    assert set(verdicts) == {"spec", "drift"}  # greedy: the plain row is the reference
    assert verdicts["spec"].verdict == "pass"
    assert (
        "3/3 outputs identical to the engine's own plain decoding (plain)"
        in verdicts["spec"].detail
    )
    drift = verdicts["drift"]
    assert drift.verdict == "fail" and "first difference at token 3" in drift.detail
    # The margin where they part comes from the in-process copy of the target.
    assert LOADS == ["target"] and drift.statistic is not None
    assert CLOSED == ["plain", "spec", "drift"]  # one engine alive at a time


def test_an_engine_plugin_not_installed_names_its_package(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from specbench.errors import PluginError
    from specbench.plugins import MethodRegistry

    with pytest.raises(PluginError) as error:
        MethodRegistry().get("llama-cpp")
    assert "pip install -c constraints/cpu.txt -e plugins/specbench-llamacpp" in (
        error.value.hint or ""
    )
    assert "specbench-llamacpp-build" in (error.value.hint or "")
