"""The cost ledger: phases add up to the wall time and each lands in the right bucket.

Timing tests run on a virtual clock that moves only where a toy model or a verifier
"sleeps": the tests check where time is attributed, not how accurately a loaded machine
sleeps (real sleeps overshot the bounds under a concurrent benchmark).
"""

from __future__ import annotations

import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch
from helpers import hf_pair, make_method, request, sample_record
from presets_for_tests import tiny_hf_models

from specbench.costs.phases import cost_levels, level_for, summarize_costs
from specbench.costs.units import EngineUnitCosts, UnitCosts
from specbench.decoding.core import decode
from specbench.decoding.drafters import ModelDrafter
from specbench.decoding.verify import RejectionVerifier, Verdict
from specbench.models.ledger import CostLedger, open_ledger, phase
from specbench.models.toy import ToyConfig, ToyLanguageModel
from specbench.plugins import MethodModels, discover_methods
from specbench.presets.schema import load_preset
from specbench.records import PHASES, RunHeader, SampleRecord, SummaryRecord, read_records
from specbench.run.runner import run_preset

TARGET_MS = 12.0
DRAFT_MS = 3.0
#: A run's probe: a one-token step of 50 ms, a 4-row call of 60 ms, a draft step of 10 ms.
PROBED = UnitCosts(context=3, target_ms={1: 50.0, 4: 60.0}, draft_ms=10.0)


def _pair() -> MethodModels:
    common: dict[str, Any] = dict(vocab_size=24, order=1, seed=3, sharpness=2.0)
    target = ToyLanguageModel(ToyConfig(**common, forward_ms=TARGET_MS), name="target")
    draft = ToyLanguageModel(ToyConfig(**common, distance=0.5, forward_ms=DRAFT_MS), name="draft")
    return MethodModels(target=target, draft=draft)


def _ledger(models: MethodModels) -> CostLedger:
    assert models.draft is not None
    return CostLedger({id(models.target): "target", id(models.draft): "draft"})


class VirtualClock:
    """Time that passes only through :meth:`sleep`."""

    def __init__(self) -> None:
        self.now = 1000.0

    def perf_counter(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> VirtualClock:
    """Every clock the ledger, the core, the runner and the toy models read, made virtual."""
    import specbench.decoding.core as core
    import specbench.models.ledger as ledger
    import specbench.models.toy as toy
    import specbench.run.runner as runner

    virtual = VirtualClock()
    fake = SimpleNamespace(
        perf_counter=virtual.perf_counter,
        monotonic=virtual.perf_counter,
        sleep=virtual.sleep,
        time=time.time,
    )
    for module in (core, ledger, toy, runner):
        monkeypatch.setattr(module, "time", fake)
    return virtual


def _run(preset: Path) -> tuple[list[Any], UnitCosts]:
    """Run ``preset`` next to it; its records and the unit costs its header holds."""
    out = preset.with_suffix(".jsonl")
    run_preset(load_preset(str(preset), discover_methods()), output=out)
    records = read_records(out)
    header = next(r for r in records if isinstance(r, RunHeader))
    return records, UnitCosts.model_validate(header.unit_costs)


class SlowVerifier(RejectionVerifier):
    """The shared verifier plus a known delay: the delay must land in ``verify``."""

    delay_s = 0.004
    clock: VirtualClock | None = None

    def verify(self, *args: Any, **kwargs: Any) -> Verdict:
        assert self.clock is not None
        self.clock.sleep(self.delay_s)
        return super().verify(*args, **kwargs)


def test_each_phase_holds_the_time_spent_in_it(clock: VirtualClock) -> None:
    models = _pair()
    ledger = _ledger(models)
    drafter = ModelDrafter(models.require_draft(), k=3)
    verifier = SlowVerifier()
    verifier.clock = clock
    start = clock.perf_counter()
    with open_ledger(ledger):
        (result,) = decode([request([1, 2, 3], 24)], models.target, drafter, verifier)
        with phase("verify"):  # nested phases are exclusive: this sleep is verify, not host
            clock.sleep(0.01)
    wall = clock.perf_counter() - start
    totals = ledger.totals
    seconds = totals.seconds
    target_calls = result.stats.target_calls
    assert totals.forwards("target") == target_calls + 0  # the prompt is part of call 1
    assert totals.forwards("draft") == result.stats.draft_calls
    # Every virtual millisecond is where it was spent, and nowhere else.
    assert seconds["target"] == pytest.approx(TARGET_MS / 1000 * target_calls)
    assert seconds["draft"] == pytest.approx(DRAFT_MS / 1000 * result.stats.draft_calls)
    assert seconds["verify"] == pytest.approx(SlowVerifier.delay_s * target_calls + 0.01)
    assert sum(seconds.values()) == pytest.approx(wall)


def test_records_split_the_wall_time_and_summaries_predict_from_unit_costs(
    tmp_path: Path, clock: VirtualClock
) -> None:
    preset = tmp_path / "ledger.toml"
    preset.write_text(
        f"""
name = "ledger"
[models.target]
backend = "toy"
vocab_size = 24
seed = 1
forward_ms = {TARGET_MS}
[models.draft]
backend = "toy"
vocab_size = 24
seed = 1
distance = 0.5
forward_ms = {DRAFT_MS}
[[methods]]
name = "baseline"
[[methods]]
name = "speculative"
params = {{ k = 3 }}
[[methods]]
name = "prompt-lookup"
[prompts]
source = "inline"
prompts = ["abc abc abc", "hello there"]
[sampling]
max_new_tokens = 16
[runs]
warmup = 0
"""
    )
    records, units = _run(preset)
    assert units.target_ms[1] == pytest.approx(TARGET_MS) and units.draft_ms is not None
    assert units.draft_ms == pytest.approx(DRAFT_MS)
    for sample in (r for r in records if isinstance(r, SampleRecord)):
        costs = sample.costs
        assert costs is not None and costs.unit_s == pytest.approx(sample.wall_s)
        parts = [costs.seconds(name) for name in PHASES]
        assert all(p is not None and p >= 0 for p in parts)
        assert sum(parts) == pytest.approx(sample.wall_s, rel=0.02)  # type: ignore[arg-type]
        assert costs.target_forwards == sample.target_calls
        assert costs.target_s == pytest.approx(TARGET_MS / 1000 * sample.target_calls)
        if sample.method == "speculative":
            assert costs.draft_forwards == sample.draft_calls > 0
            assert costs.draft_s == pytest.approx(DRAFT_MS / 1000 * sample.draft_calls)
        else:
            assert costs.draft_forwards == 0
        # Probed right after the unit: the sizes its steps repeated, at their true cost.
        for role, by_rows, ms in (
            ("target", costs.target_by_rows, TARGET_MS),
            ("draft", costs.draft_by_rows, DRAFT_MS),
        ):
            repeated = {rows for rows, (calls, _) in by_rows.items() if calls > 1}
            probed = costs.probed_ms.get(role, {})
            assert set(probed) <= repeated and bool(probed) == bool(repeated), (role, by_rows)
            assert {min(repeated), max(repeated)} <= set(probed) if repeated else True
            assert all(value == pytest.approx(ms) for value in probed.values())
    summaries = {r.method: r for r in records if isinstance(r, SummaryRecord)}
    for summary in summaries.values():
        phases = summary.ms_per_token_by_phase
        assert phases is not None and summary.measured_ms_per_token is not None
        assert sum(phases.values()) == pytest.approx(summary.measured_ms_per_token, rel=0.02)  # type: ignore[arg-type]
        # The forwards alone: never more than what was measured (up to sleep jitter).
        assert summary.predicted_ms_per_token is not None
        assert summary.predicted_ms_per_token <= 1.05 * summary.measured_ms_per_token
    baseline = summaries["baseline"]
    assert baseline.predicted_ms_by_phase is not None
    assert baseline.predicted_ms_by_phase["target"] == pytest.approx(
        TARGET_MS * summaries["baseline"].target_calls_per_token, rel=0.25
    )


def _sample(**costs: Any) -> SampleRecord:
    """Ten tokens in one second, with ``costs`` as the unit's ledger."""
    return sample_record(
        new_tokens=10,
        wall_s=1.0,
        tokens_per_sec=10.0,
        steps=10,
        target_calls=10,
        costs={"unit_s": 1.0, **costs},
    )


def test_the_gap_is_named_by_the_phase_that_holds_it_and_unknown_phases_stay_unknown() -> None:
    units = UnitCosts(context=3, target_ms={1: 50.0, 4: 60.0})
    sample = _sample(
        draft_s=0.0,
        target_s=0.5,
        verify_s=0.4,
        host_s=0.1,
        target_forwards=10,
        target_rows=10,
        draft_forwards=0,
        target_by_rows={1: (10, 0.5)},
    )
    summary = summarize_costs([sample], units)
    assert summary is not None
    assert summary.predicted_ms_per_token == pytest.approx(50.0)
    assert summary.measured_ms_per_token == pytest.approx(100.0)
    assert summary.gap_phase == "verify"
    engine = summarize_costs([_sample(target_s=0.7, host_s=0.3)], units)
    assert engine is not None and engine.ms_per_token["draft"] is None
    assert engine.ms_per_token["verify"] is None and engine.ms_per_token["target"] == 70.0
    assert engine.predicted_ms_per_token is None  # its own timings: no forwards to price
    assert units.target_at(2) == pytest.approx(50 + 10 / 3)
    assert units.target_at(4) == pytest.approx(60)
    assert units.target_at(5) is None  # past the probes (a prompt): taken as measured


def test_predictions_are_priced_at_the_runs_own_speed_prompt_by_prompt() -> None:
    """A shared machine drifts: where the baseline's one-token steps on a prompt cost twice
    the probe's, every method's forwards on that prompt are priced twice as high."""
    units = PROBED
    slow = _sample(
        target_s=1.0,
        verify_s=0.0,
        draft_s=0.0,
        host_s=0.0,
        target_forwards=10,
        target_rows=10,
        draft_forwards=0,
        target_by_rows={1: (10, 1.0)},  # 100 ms a step: 2x the probe
    ).model_copy(update={"prompt_id": "p0"})
    fast = slow.model_copy(update={"prompt_id": "p1", "costs": slow.costs.model_copy(
        update={"target_by_rows": {1: (10, 0.5)}})})  # fmt: skip
    levels = cost_levels([slow, fast], units)
    assert levels == {"p0/0@eager": pytest.approx(2.0), "p1/0@eager": pytest.approx(1.0)}
    speculative = _sample(
        draft_s=0.2,
        target_s=0.6,
        verify_s=0.0,
        host_s=0.2,
        target_forwards=5,
        target_rows=20,
        draft_forwards=10,
        target_by_rows={4: (5, 0.6)},
        draft_by_rows={1: (10, 0.2)},
    ).model_copy(update={"prompt_id": "p0"})
    summary = summarize_costs([speculative], units, levels)
    assert summary is not None and summary.level == pytest.approx(2.0)
    assert summary.predicted_by_phase is not None
    assert summary.predicted_by_phase["target"] == pytest.approx(2.0 * 5 * 60.0 / 10)
    assert summary.predicted_by_phase["draft"] == pytest.approx(2.0 * 10 * 10.0 / 10)
    unscaled = summarize_costs([speculative], units)
    assert unscaled is not None and unscaled.level is None
    assert unscaled.predicted_ms_per_token == pytest.approx(summary.predicted_ms_per_token / 2)


def test_a_unit_is_priced_at_its_own_probe_and_the_rest_at_that_probes_level() -> None:
    """A unit probed right after it is priced at those costs, whatever the run's probe
    said; sizes it did not probe take the run's probe times the unit probe's level, and
    prompt-sized forwards stay as measured."""
    units = PROBED
    sample = _sample(
        draft_s=0.35,
        target_s=0.6,
        verify_s=0.0,
        host_s=0.05,
        target_forwards=7,
        target_rows=77,
        draft_forwards=13,
        target_by_rows={3: (1, 0.09), 4: (5, 0.5), 54: (1, 0.3)},
        draft_by_rows={1: (10, 0.2), 2: (2, 0.05), 51: (1, 0.1)},
        probed_ms={"target": {4: 100.0}, "draft": {1: 20.0, 2: 24.0}},
    )
    # A baseline level of 3 must not apply: the unit's own probe is nearer in time.
    levels = {f"{sample.prompt_id}/{sample.run}@eager": 3.0}
    summary = summarize_costs([sample], units, levels)
    assert summary is not None and summary.predicted_by_phase is not None
    three_rows = (50.0 + 10.0 * 2 / 3) * (100.0 / 60.0)  # the run's shape, the unit's level
    assert summary.predicted_by_phase["target"] == pytest.approx(
        (5 * 100.0 + three_rows + 300.0) / 10
    )
    assert summary.predicted_by_phase["draft"] == pytest.approx((10 * 20.0 + 2 * 24.0 + 100.0) / 10)


def test_batched_samples_share_their_batch_ledger(tmp_path: Path) -> None:
    from presets_for_tests import write_fast_preset

    path = write_fast_preset(tmp_path, forward_ms=2.0)
    path.write_text(path.read_text().replace("{ k = 3 }", "{ k = 3, batch_size = 2 }"))
    resolved = load_preset(str(path), discover_methods(), [("runs.count", 1)])
    out = tmp_path / "b.jsonl"
    run_preset(resolved, output=out)
    batched = [r for r in read_records(out) if isinstance(r, SampleRecord) and r.batch_size == 2]
    assert batched
    for sample in batched:
        assert sample.costs is not None
        assert sample.costs.unit_s == pytest.approx(sample.batch_wall_s)
        total = sum(sample.costs.seconds(name) or 0.0 for name in PHASES)
        assert total == pytest.approx(sample.batch_wall_s, rel=0.02)


def test_transformers_loop_times_its_forwards_and_leaves_verification_unknown(
    tiny_hf: dict[str, Any],
) -> None:
    from specbench.costs.phases import ledger_costs

    pair = hf_pair(tiny_hf)
    method = make_method("hf-generate", pair, assisted=True, num_assistant_tokens=3)
    ledger = _ledger(pair)
    start = time.perf_counter()
    with open_ledger(ledger), torch.inference_mode():
        result = method.generate(request([5, 9, 23, 7], 12))
    wall = time.perf_counter() - start
    costs = ledger_costs(ledger, method, [result], wall)
    assert costs.verify_s is None
    assert costs.target_s is not None and costs.target_s > 0
    assert costs.draft_s is not None and costs.draft_s > 0
    assert costs.target_forwards == result.stats.target_calls
    assert costs.draft_forwards == result.stats.draft_calls
    assert costs.host_s == pytest.approx(wall - costs.target_s - costs.draft_s)


def test_each_engine_is_probed_and_its_forwards_are_priced_at_its_own_costs(
    tiny_hf: dict[str, Any], tmp_path: Path
) -> None:
    """The static engine's forwards cost other than the eager session's: a run with both
    probes both, each sample's ledger names the engine its forwards ran on, and a summary
    prices them at that engine's costs."""
    pair = tiny_hf["llama"]
    preset = tmp_path / "engines.toml"
    preset.write_text(
        tiny_hf_models(pair)
        + """
[[methods]]
name = "baseline"
[[methods]]
name = "baseline"
label = "baseline-static"
params = { engine = "static", static_max_len = 64 }
[[methods]]
name = "speculative"
label = "speculative-static"
params = { k = 2, engine = "static", static_max_len = 64 }
[prompts]
source = "inline"
prompts = ["hello world"]
chat_template = false
[sampling]
max_new_tokens = 6
[runs]
warmup = 0
"""
    )
    records, units = _run(preset)
    static = units.engines["static"]
    assert set(static.target_ms) == set(units.target_ms) and static.draft_ms is not None
    engines = {
        r.method: r.costs.engines for r in records if isinstance(r, SampleRecord) and r.costs
    }
    assert engines == {
        "baseline": {"target": "eager"},
        "baseline-static": {"target": "static"},
        "speculative-static": {"target": "static", "draft": "static"},
    }
    summaries = {r.method: r for r in records if isinstance(r, SummaryRecord)}
    assert all(summary.cost_level is not None for summary in summaries.values())
    # Without probes of their own (older records), the static rows are priced at the level
    # of the baseline decoding on the static engine.
    samples = [
        r.model_copy(update={"costs": r.costs.model_copy(update={"probed_ms": {}})})
        for r in records
        if isinstance(r, SampleRecord) and r.costs
    ]
    levels = cost_levels([s for s in samples if s.method.startswith("baseline")], units)

    def level(method: str) -> float | None:
        summary = summarize_costs([s for s in samples if s.method == method], units, levels)
        return None if summary is None else summary.level

    static_level = level("baseline-static")
    assert static_level is not None and static_level != level("baseline")
    assert level("speculative-static") == static_level
    # Priced at the static probe: a static engine twice as dear doubles the prediction.
    (sample,) = (
        r for r in records if isinstance(r, SampleRecord) and r.method == "speculative-static"
    )
    # Its repeated draft steps were probed again right after it, on the static engine.
    assert sample.costs is not None and sample.costs.probed_ms.get("draft")
    # Without that probe (an older record) its forwards take the run's static probe.
    sample = sample.model_copy(update={"costs": sample.costs.model_copy(update={"probed_ms": {}})})
    dear = units.model_copy(
        update={
            "engines": {
                "static": static.model_copy(
                    update={
                        "target_ms": {k: 2 * v for k, v in static.target_ms.items()},
                        "draft_ms": 2 * static.draft_ms,
                    }
                )
            }
        }
    )
    cheap, costly = summarize_costs([sample], units), summarize_costs([sample], dear)
    assert cheap is not None and costly is not None
    assert cheap.predicted_by_phase is not None and costly.predicted_by_phase is not None
    assert cheap.predicted_by_phase["draft"] > 0
    assert costly.predicted_by_phase["target"] == pytest.approx(
        2 * cheap.predicted_by_phase["target"], rel=0.01
    )
    # The draft's prompt forward is taken as measured; its steps are priced.
    assert costly.predicted_by_phase["draft"] > 1.1 * cheap.predicted_by_phase["draft"]
    assert units.for_engine("compiled") is units  # not probed: the eager costs


def test_each_engine_is_priced_at_its_own_level_from_the_baseline_on_it() -> None:
    units = UnitCosts(
        context=3,
        target_ms={1: 50.0, 4: 60.0},
        engines={"static": EngineUnitCosts(target_ms={1: 25.0, 4: 30.0})},
    )
    base = _sample(
        target_s=0.5,
        verify_s=0.0,
        draft_s=0.0,
        host_s=0.5,
        target_forwards=10,
        target_rows=10,
        draft_forwards=0,
        target_by_rows={1: (10, 0.5)},  # 50 ms a step
    )
    static = base.model_copy(
        update={"costs": base.costs.model_copy(update={"engines": {"target": "static"}})}  # type: ignore[union-attr]
    )
    levels = cost_levels([base, static], units)
    assert levels == {"p0/0@eager": pytest.approx(1.0), "p0/0@static": pytest.approx(2.0)}
    # Each sample is priced at its own engine's level; an engine the reference did not
    # decode on takes the eager session's.
    assert level_for(levels, static) == pytest.approx(2.0)
    assert level_for(levels, base) == pytest.approx(1.0)
    only_eager = cost_levels([base], units)
    assert level_for(only_eager, static) == pytest.approx(1.0)
    priced = summarize_costs([static], units, levels)
    assert priced is not None and priced.predicted_by_phase is not None
    assert priced.predicted_by_phase["target"] == pytest.approx(2.0 * 25.0)
