"""Async speculation (``ssd``): exactness, the speculation cache's bookkeeping, the audit and
the draft worker's lifecycle.

Greedy claims are token for token; sampling claims go through ``specbench audit`` at
ALPHA (Bonferroni inside the audit) with fixed seeds, 1500 generations per method.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
from presets_for_tests import write_audit_toy_preset, write_tiny_hf_sampling_preset

from specbench.audit.run import AuditOptions, audit_preset
from specbench.cpu_pinning import pinned
from specbench.decoding.draft_worker import DraftWorkerError, WorkerDraftSide
from specbench.decoding.ssd import FanOut, SpeculationDrafter, hit_rate_at, saguaro_rescale
from specbench.models.toy import ToyConfig, ToyLanguageModel
from specbench.plugins import MethodModels, discover_methods
from specbench.presets.schema import load_preset
from specbench.records import SampleRecord, read_records
from specbench.report.results import load_results
from specbench.report.tables import file_tables
from specbench.testing import make_method, process_alive, request, terminal_sigint, toy_models

ALPHA = 0.01
REPO = Path(__file__).resolve().parents[1]


def _pair() -> MethodModels:
    return toy_models(vocab_size=24, order=2, distance=0.4, sharpness=3.0, eos_bias=-2.0)


def _wait_gone(pid: int, seconds: float = 15.0) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if not process_alive(pid):
            return True
        time.sleep(0.1)
    return False


# ----------------------------------------------------------------------------- greedy


@pytest.mark.parametrize("mode", ["inline", "counterfactual", "async"])
@pytest.mark.parametrize(
    ("k", "fan_out", "miss_policy"), [(1, 1, "jit"), (4, 3, "jit"), (3, 2, "none")]
)
def test_greedy_ssd_equals_greedy_decoding_token_for_token(
    mode: str, k: int, fan_out: int, miss_policy: str
) -> None:
    models = _pair()
    baseline = make_method("baseline", models)
    method = make_method("ssd", models, mode=mode, k=k, fan_out=fan_out, miss_policy=miss_policy)
    try:
        for seed, prompt in enumerate(([1, 2, 3], [5], [7, 7, 7, 7, 2])):
            want = baseline.generate(request(prompt, 40, seed=seed, stop=frozenset({0})))
            got = method.generate(request(prompt, 40, seed=seed, stop=frozenset({0})))
            assert got.tokens == want.tokens
            assert got.stop_reason == want.stop_reason
    finally:
        method.close()


def test_the_hit_rate_equals_the_counterfactual_rate_of_its_own_fan_out() -> None:
    """The cache holds exactly the top-F candidates the ranks count: both measure one thing."""
    models = toy_models(vocab_size=24, order=2, distance=1.0, sharpness=2.0)
    for fan_out in (1, 2, 3):
        method = make_method("ssd", models, mode="inline", k=3, fan_out=fan_out)
        stats = method.generate(request([1, 2, 3], 80, seed=1)).stats.extra
        assert 0 < stats["ssd_hit_rate"] < 1
        assert stats["ssd_hit_rate"] == pytest.approx(stats[f"ssd_cf_hit_rate_f{fan_out}"])
    rates = [stats[f"ssd_cf_hit_rate_f{f}"] for f in (1, 2, 3, 4)]
    assert rates == sorted(rates)


def test_the_counterfactual_tokens_per_round_match_a_real_run_without_jit() -> None:
    models = toy_models(vocab_size=24, order=2, distance=1.0, sharpness=2.0)
    method = make_method("ssd", models, mode="inline", k=3, fan_out=2, miss_policy="none")
    result = method.generate(request([1, 2, 3], 80, seed=4))
    rounds = [r.tokens for r in method.proposer._rounds]  # type: ignore[attr-defined]
    assert sum(rounds) == len(result.tokens) == 80
    measured = sum(rounds[1:]) / len(rounds[1:])
    assert result.stats.extra["ssd_cf_tokens_per_round_none_f2"] == pytest.approx(measured)
    # With jit the misses yield their drafts too: the projection for "none" is lower.
    jit = make_method("ssd", models, mode="inline", k=3, fan_out=2)
    extra = jit.generate(request([1, 2, 3], 80, seed=4)).stats.extra
    assert extra["ssd_hit_rate"] < 1
    jit_rounds = [r.tokens for r in jit.proposer._rounds[1:]]  # type: ignore[attr-defined]
    assert extra["ssd_cf_tokens_per_round_none_f2"] < sum(jit_rounds) / len(jit_rounds)


def test_records_carry_the_speculation_numbers() -> None:
    method = make_method("ssd", _pair(), mode="inline", k=3, fan_out=2)
    result = method.generate(request([1, 2, 3], 60, seed=2))
    extra = result.stats.extra
    hits = [extra[f"ssd_hit_accepted_{i}"] for i in range(4)]
    assert sum(hits) == pytest.approx(1.0)
    assert extra["ssd_tokens_per_round_hit"] >= 1
    assert extra["ssd_draft_forwards_per_round"] > 1
    assert extra["ssd_branches_per_round"] <= 2 * 4
    assert result.stats.draft_calls > 0
    assert extra["ssd_worker_cores"] == 0  # inline: nothing pinned


def test_counterfactual_mode_reports_no_cache_hit_rate() -> None:
    method = make_method("ssd", _pair(), mode="counterfactual", k=3, sweep=[1, 5])
    extra = method.generate(request([1, 2, 3], 40, seed=2)).stats.extra
    assert "ssd_hit_rate" not in extra and extra["ssd_branches_per_round"] == 0
    assert extra["ssd_cf_hit_rate_f1"] <= extra["ssd_cf_hit_rate_f5"]


def test_saguaro_rescaling_lowers_the_top_tokens_and_keeps_a_distribution() -> None:
    probs = torch.tensor([[0.5, 0.3, 0.15, 0.05]])
    scaled = saguaro_rescale(probs, top=2, x=0.5)
    assert scaled.sum().item() == pytest.approx(1.0)
    assert scaled[0, :2].tolist() == pytest.approx([0.25 / 0.6, 0.15 / 0.6])
    assert scaled[0, 2:].tolist() == pytest.approx([0.15 / 0.6, 0.05 / 0.6])


def test_saguaro_sampling_trades_acceptance_for_cache_hits() -> None:
    models = toy_models(vocab_size=24, order=2, distance=1.0, sharpness=2.0)
    hit_rates = []
    for x in (None, 0.2):
        method = make_method("ssd", models, mode="inline", k=3, fan_out=2, saguaro_x=x)
        runs = [
            method.generate(request([1, 2, 3], 60, seed=seed, temperature=1.0)).stats.extra
            for seed in range(30)
        ]
        hit_rates.append(sum(r["ssd_hit_rate"] for r in runs) / len(runs))
    assert hit_rates[1] > hit_rates[0] + 0.1


def test_hit_and_miss_schedules_are_used_after_hits_and_misses() -> None:
    draft = ToyLanguageModel(ToyConfig(vocab_size=16, seed=1))
    drafter = SpeculationDrafter(draft, 2, FanOut(hit=(1, 0, 0), miss=(0, 0, 4)))
    drafter.start(request([1, 2], 20))
    reply = drafter.answer([1, 2], None, 10)
    assert not reply.hit
    drafter.speculate()  # after a miss: 4 branches at the bonus position only
    assert {j for j, _ in drafter._cache} == {2} and len(drafter._cache) == 4
    token = next(iter(drafter._cache))[1]
    reply = drafter.answer([1, 2, *reply.tokens, token], (2, token), 10)
    assert reply.hit
    drafter.speculate()  # after a hit: one branch at position 0
    assert [j for j, _ in drafter._cache] == [0]


def test_a_schedule_of_the_wrong_length_is_refused() -> None:
    with pytest.raises(ValueError, match="k \\+ 1 = 4 branch counts"):
        make_method("ssd", _pair(), k=3, fan_out_hit=[1, 1])


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="Linux affinity only")
def test_pinning_moves_every_thread_and_restores_them() -> None:
    cores = sorted(os.sched_getaffinity(0))
    threads_before = torch.get_num_threads()
    with pinned(cores[:1], 1):
        tids = [int(tid) for tid in os.listdir("/proc/self/task")]
        assert all(os.sched_getaffinity(tid) == {cores[0]} for tid in tids)
        assert torch.get_num_threads() == 1
    assert sorted(os.sched_getaffinity(0)) == cores
    assert torch.get_num_threads() == threads_before


def test_hit_rate_at_a_schedule_counts_each_outcome_at_its_own_glue_row() -> None:
    ranks = [(0, 0), (0, 1), (1, 0), (2, 2), (1, -1)]
    assert hit_rate_at(ranks, (2, 2, 2)) == 0.6
    assert hit_rate_at(ranks, (2, 1, 3)) == 0.8
    assert hit_rate_at(ranks, (1, 0)) == 0.2  # rows past the schedule hold nothing
    assert hit_rate_at([], (1,)) is None


def test_a_sweep_of_schedules_reports_each_by_name() -> None:
    method = make_method("ssd", _pair(), mode="counterfactual", k=2, sweep=[2, [2, 1, 0]])
    extra = method.generate(request([1, 2, 3], 40, seed=3)).stats.extra
    assert {"ssd_cf_hit_rate_f2", "ssd_cf_hit_rate_f2-1-0"} <= set(extra)
    assert extra["ssd_cf_hit_rate_f2-1-0"] <= extra["ssd_cf_hit_rate_f2"]
    with pytest.raises(ValueError, match="needs k \\+ 1 = 3 widths"):
        make_method("ssd", _pair(), k=2, sweep=[[1, 1]])


def test_inline_and_async_draw_the_same_samples() -> None:
    """The worker draws from the request's draft stream exactly as the inline side does."""
    models = _pair()
    outputs = []
    for mode in ("inline", "async"):
        method = make_method("ssd", models, mode=mode, k=3, fan_out=2)
        try:
            outputs.append(method.generate(request([4, 5], 40, seed=9, temperature=1.0)).tokens)
        finally:
            method.close()
    assert outputs[0] == outputs[1]


# ----------------------------------------------------------------------------- the audit


def _audit(tmp_path: Path, methods: list[str], temperature: float, **options: object):
    path = write_audit_toy_preset(
        tmp_path / "ssd-audit.toml", methods, temperature, distance=1.5, top_p=1.0
    )
    resolved = load_preset(str(path), discover_methods())
    return audit_preset(resolved, AuditOptions(**options), tmp_path / "audit.jsonl")  # type: ignore[arg-type]


@pytest.mark.usefixtures("broken_plugin")
def test_audit_passes_ssd_when_sampling_and_fails_its_wrong_branch_twin(tmp_path: Path) -> None:
    methods = [
        'name = "baseline"',
        'name = "ssd"\nparams = { k = 1, fan_out = 4 }',
        'name = "ssd"\nlabel = "ssd-inline"\nparams = { k = 2, fan_out = 2, mode = "inline" }',
        'name = "ssd"\nlabel = "ssd-saguaro"\nparams = { k = 1, fan_out = 2, saguaro_x = 0.3 }',
        'name = "ssd-wrong-branch"\nparams = { k = 1, fan_out = 4 }',
    ]
    # k = 1: rounds of at most two tokens, so the four tokens tested include cache hits.
    outcome = _audit(tmp_path, methods, 1.0, samples=1500, tokens=4, alpha=ALPHA)
    verdicts = {r.method: r for r in outcome.records}
    assert verdicts["ssd"].verdict == "pass", verdicts["ssd"].detail
    assert verdicts["ssd-inline"].verdict == "pass", verdicts["ssd-inline"].detail
    assert verdicts["ssd-saguaro"].verdict == "pass", verdicts["ssd-saguaro"].detail
    broken = verdicts["ssd-wrong-branch"]
    assert broken.verdict == "fail"
    assert broken.p_value is not None and broken.p_value < broken.alpha  # type: ignore[operator]


def test_greedy_audit_passes_ssd_in_every_mode(tmp_path: Path) -> None:
    methods = [
        'name = "baseline"',
        'name = "ssd"\nparams = { k = 3 }',
        'name = "ssd"\nlabel = "ssd-inline"\nparams = { mode = "inline", miss_policy = "none" }',
        'name = "ssd"\nlabel = "ssd-cf"\nparams = { mode = "counterfactual" }',
    ]
    outcome = _audit(tmp_path, methods, 0.0)
    assert outcome.mode == "greedy"
    assert {r.method: r.verdict for r in outcome.records} == dict.fromkeys(
        ("ssd", "ssd-inline", "ssd-cf"), "pass"
    )


def test_audit_passes_ssd_on_a_tiny_hf_pair(tiny_hf: dict, tmp_path: Path) -> None:
    """The worker loads the HF draft from its spec (a local folder) in its own process."""
    path = write_tiny_hf_sampling_preset(
        tmp_path / "hf.toml", tiny_hf["llama"], 'name = "ssd"\nparams = { k = 2, fan_out = 2 }'
    )
    resolved = load_preset(str(path), discover_methods())
    outcome = audit_preset(
        resolved,
        AuditOptions(samples=400, tokens=2, prompts=1, alpha=ALPHA),  # type: ignore[arg-type]
        tmp_path / "audit.jsonl",
    )
    (record,) = outcome.records
    assert record.verdict == "pass", record.detail


# ----------------------------------------------------------------------------- lifecycle


def test_the_worker_stops_when_the_method_closes() -> None:
    method = make_method("ssd", _pair(), k=2)
    method.generate(request([1, 2], 10))
    worker = method.worker
    assert worker is not None and worker.pid is not None
    pid = worker.pid
    assert process_alive(pid)
    method.close()
    assert _wait_gone(pid, 10)


class _FailingDraft(ToyLanguageModel):
    """A draft that fails on its 6th session (in the worker: a draft that breaks mid-run)."""

    sessions = 0

    error: type[Exception] = RuntimeError

    def new_session(self):  # type: ignore[no-untyped-def]
        type(self).sessions += 1
        if type(self).sessions > 5:
            raise self.error("draft exploded")
        return super().new_session()


class _UnreadableDraft(_FailingDraft):
    """Fails with an OSError, which must not pass for the pipe closing."""

    error = FileNotFoundError


@pytest.mark.parametrize("draft_class", [_FailingDraft, _UnreadableDraft])
def test_a_failing_worker_is_reported_in_one_line_and_stopped(
    draft_class: type[_FailingDraft],
) -> None:
    config = ToyConfig(vocab_size=24, order=2, sharpness=3.0)
    target = ToyLanguageModel(config)
    draft = draft_class(ToyConfig(vocab_size=24, order=2, sharpness=3.0, distance=0.4))
    method = make_method("ssd", MethodModels(target=target, draft=draft), k=2)
    error = draft_class.error.__name__
    try:
        with pytest.raises(DraftWorkerError, match=f"draft worker failed: {error}: draft exploded"):
            for seed in range(10):
                method.generate(request([1, 2], 10, seed=seed))
        worker = method.worker
        assert worker is not None and worker.pid is None  # closed on the error
    finally:
        method.close()


def test_a_killed_worker_is_named_with_its_signal() -> None:
    method = make_method("ssd", _pair(), k=2)
    try:
        method.generate(request([1, 2], 10))
        worker = method.worker
        assert worker is not None and worker.pid is not None
        os.kill(worker.pid, signal.SIGKILL)
        with pytest.raises(DraftWorkerError, match=r"died \(exit code -9\)"):
            method.generate(request([1, 2], 10))
    finally:
        method.close()


def test_the_worker_exits_when_the_decoding_process_is_killed(tmp_path: Path) -> None:
    script = tmp_path / "parent.py"
    script.write_text(
        textwrap.dedent(
            """
            import sys, time
            sys.path.insert(0, sys.argv[1])
            from specbench.testing import make_method, request, toy_models

            if __name__ == "__main__":
                method = make_method("ssd", toy_models(vocab_size=24, order=2), k=2)
                method.generate(request([1, 2], 10))
                print(method.worker.pid, flush=True)
                time.sleep(60)
            """
        )
    )
    parent = subprocess.Popen(
        [sys.executable, str(script), str(REPO)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert parent.stdout is not None
        worker_pid = int(parent.stdout.readline())
        assert process_alive(worker_pid)
        parent.kill()
        parent.wait()
        assert _wait_gone(worker_pid), "the worker outlived its killed parent"
    finally:
        parent.kill()


TOY_RUN = """
name = "ssd-interrupt"
[models.target]
backend = "toy"
vocab_size = 24
order = 2
seed = 7
forward_ms = 30.0
[models.draft]
backend = "toy"
vocab_size = 24
order = 2
seed = 7
distance = 0.5
forward_ms = 3.0
[[methods]]
name = "ssd"
params = {{ k = 3 }}
[prompts]
source = "inline"
prompts = {prompts}
[sampling]
max_new_tokens = 24
[runs]
warmup = 0
"""


def _tagged(tag: str) -> list[int]:
    """Live processes whose environment carries ``tag`` (a run and everything it started)."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            with open(f"/proc/{entry}/environ", "rb") as handle:
                if tag.encode() in handle.read() and process_alive(int(entry)):
                    found.append(int(entry))
        except OSError:
            continue
    return found


def _none_left(tag: str, seconds: float = 15.0) -> bool:
    deadline = time.monotonic() + seconds
    while _tagged(tag):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True


def _workers(tag: str) -> list[int]:
    """The tagged ssd workers (multiprocessing's resource tracker is tagged too)."""
    found = []
    for pid in _tagged(tag):
        with open(f"/proc/{pid}/cmdline", "rb") as handle:
            if b"spawn_main" in handle.read():
                found.append(pid)
    return found


def _start_run(tmp_path: Path, prompts: int) -> tuple[subprocess.Popen[str], Path, str]:
    preset = tmp_path / "p.toml"
    preset.write_text(TOY_RUN.format(prompts=[f"prompt {i}" for i in range(prompts)]))
    out = tmp_path / "out.jsonl"
    tag = f"SPECBENCH_TEST_TAG={tmp_path.name}-{time.monotonic_ns()}"
    name, value = tag.split("=")
    run = subprocess.Popen(
        [sys.executable, "-m", "specbench", "run", "-p", str(preset), "-o", str(out), "-q"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, name: value},
        start_new_session=True,  # a terminal's Ctrl-C reaches the whole process group
        preexec_fn=terminal_sigint,
    )
    return run, out, tag


def _wait_for_samples(out: Path, count: int) -> None:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if out.exists() and sum(1 for line in out.open() if '"sample"' in line) >= count:
            return
        time.sleep(0.1)
    raise AssertionError(f"fewer than {count} samples after 120 s")


def _samples(out: Path) -> list[SampleRecord]:
    return [r for r in read_records(out) if isinstance(r, SampleRecord)]


def test_a_finished_run_leaves_no_worker_behind(tmp_path: Path) -> None:
    run, out, tag = _start_run(tmp_path, prompts=2)
    _, stderr = run.communicate(timeout=120)
    assert run.returncode == 0, stderr
    samples = _samples(out)
    assert len(samples) == 2
    assert _none_left(tag)
    # The worker's speculation ran beside the target: overlapped, not in the phases.
    for sample in samples:
        costs = sample.costs
        assert costs is not None and costs.overlapped_draft_s and costs.overlapped_draft_forwards
        assert costs.overlapped_draft_s < costs.unit_s
    # The report's async table: the cache, the waits, the overlap and the sweep.
    (table,) = [t for t in file_tables(load_results(out)) if t.key == "async"]
    (row,) = table.rows
    assert table.columns[-4:] == [f"hit rate F={f}" for f in (1, 2, 3, 4)]
    assert row[0] == "ssd" and all(cell != "-" for cell in row[1:3] + row[4:])


def test_ctrl_c_stops_the_worker_and_keeps_finished_samples(tmp_path: Path) -> None:
    run, out, tag = _start_run(tmp_path, prompts=40)
    try:
        _wait_for_samples(out, 2)
        assert _workers(tag)
        os.killpg(run.pid, signal.SIGINT)
        _, stderr = run.communicate(timeout=60)
    finally:
        if run.poll() is None:
            os.killpg(run.pid, signal.SIGKILL)
    assert run.returncode == 130, stderr
    assert "interrupted during" in stderr and "--resume" in stderr
    assert len(_samples(out)) >= 2
    assert _none_left(tag)


def test_a_killed_worker_ends_the_run_in_one_line_and_keeps_finished_samples(
    tmp_path: Path,
) -> None:
    run, out, tag = _start_run(tmp_path, prompts=40)
    try:
        _wait_for_samples(out, 2)
        workers = _workers(tag)
        assert workers
        for pid in workers:
            os.kill(pid, signal.SIGKILL)
        _, stderr = run.communicate(timeout=60)
    finally:
        if run.poll() is None:
            os.killpg(run.pid, signal.SIGKILL)
    assert run.returncode == 1, stderr  # a failure during the run, not bad input (2)
    (line,) = [line for line in stderr.splitlines() if "draft worker" in line]
    assert "died (exit code -9)" in line and "--resume" in line
    kept = _samples(out)
    assert len(kept) >= 2 and all(s.new_tokens for s in kept)
    assert _none_left(tag)


@pytest.mark.skipif(
    not torch.cuda.is_available() or torch.cuda.device_count() < 2,
    reason="needs two CUDA devices (the worker takes the second)",
)
def test_the_worker_takes_the_second_cuda_device(tiny_hf: dict) -> None:
    from specbench.models.loading import load_models
    from specbench.models.specs import ModelsSpec

    spec = ModelsSpec.model_validate(
        {
            "target": {"backend": "hf", "model": tiny_hf["llama"]["target"], "device": "cuda:0"},
            "draft": {"backend": "hf", "model": tiny_hf["llama"]["draft"], "device": "cuda:0"},
        }
    )
    models = load_models(spec)
    method = make_method("ssd", models, k=2)
    try:
        baseline = make_method("baseline", models)
        want = baseline.generate(request([1, 2, 3], 16)).tokens
        assert method.generate(request([1, 2, 3], 16)).tokens == want
        worker = method.worker
        assert isinstance(worker, WorkerDraftSide) and worker.setup.device == "cuda:1"
    finally:
        method.close()
