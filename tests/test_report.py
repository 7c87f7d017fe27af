"""Reports: Spec-Bench style category table, several files, PNG plots."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from specbench.cli.main import app
from specbench.plugins import discover_methods
from specbench.presets.schema import load_preset
from specbench.report.results import category_table, load_results
from specbench.run.runner import run_preset

PRESET = """
[models.target]
backend = "toy"
vocab_size = 64
forward_ms = 1.0
[models.draft]
backend = "toy"
vocab_size = 64
distance = 0.5
[[methods]]
name = "baseline"
[[methods]]
name = "speculative"
params = {{ k = {k} }}
[prompts]
source = "spec-bench"
per_category = 1
max_turns = 1
[sampling]
temperature = 0.0
max_new_tokens = 8
[runs]
warmup = 0
"""


@pytest.fixture(scope="module")
def results(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    root = tmp_path_factory.mktemp("report")
    paths = []
    for k in (2, 4):
        preset = root / f"k{k}.toml"
        preset.write_text(PRESET.format(k=k))
        out = root / f"k{k}.jsonl"
        run_preset(load_preset(str(preset), discover_methods()), output=out)
        paths.append(out)
    return paths


def test_category_table_groups_mt_bench_like_spec_bench(results: list[Path]) -> None:
    table = category_table(load_results(results[0]))
    assert table is not None
    assert table.columns == [
        "mt_bench",
        "translation",
        "summarization",
        "qa",
        "math_reasoning",
        "rag",
        "overall",
    ]
    assert table.rows["speculative"]["mt_bench"].samples == 8  # 8 MT-Bench categories x 1
    assert table.rows["baseline"]["overall"].speedup == pytest.approx(1.0)


def test_report_cli_prints_tables_and_writes_plots(results: list[Path], tmp_path: Path) -> None:
    plots = tmp_path / "plots"
    result = CliRunner().invoke(app, ["report", *map(str, results), "--plots", str(plots)])
    assert result.exit_code == 0, result.output
    assert "By category" in result.output and "All files" in result.output
    for name in ("speedup.png", "acceptance_by_position.png"):
        data = (plots / name).read_bytes()
        assert data.startswith(b"\x89PNG") and len(data) > 5000


def test_speedup_plot_draws_no_bar_for_a_method_a_file_lacks(
    results: list[Path], tmp_path: Path
) -> None:
    from specbench.report.plots import speedup_bars

    preset = tmp_path / "other.toml"
    preset.write_text(
        PRESET.format(k=3).replace(
            'name = "speculative"', 'name = "speculative"\nlabel = "spec-k3"'
        )
    )
    other = tmp_path / "other.jsonl"
    run_preset(load_preset(str(preset), discover_methods()), output=other)
    files = [load_results(results[0]), load_results(other)]
    labels, bars = speedup_bars(files)
    assert labels == ["baseline", "speculative (k=2)", "spec-k3 (k=3)"] or set(labels) >= {
        "baseline"
    }
    drawn = {(b.file_index, b.method) for b in bars}
    assert all(b.speedup > 0 for b in bars)
    speculative = next(label for label in labels if label.startswith("speculative"))
    k3 = next(label for label in labels if label.startswith("spec-k3"))
    assert (0, speculative) in drawn and (1, speculative) not in drawn
    assert (1, k3) in drawn and (0, k3) not in drawn
    assert len(bars) == 4  # two baselines and one method per file, nothing invented


def test_summaries_carry_the_acceptance_profile_and_intervals(results: list[Path]) -> None:
    loaded = load_results(results[1])
    summaries = {s.method: s for s in loaded.summaries}
    spec, base = summaries["speculative"], summaries["baseline"]
    assert len(spec.position_marginal) == 4
    # marginal = accepted at i / steps: non-increasing, and AL = 1 + sum(marginal)
    assert all(
        a >= b for a, b in zip(spec.position_marginal, spec.position_marginal[1:], strict=False)
    )
    assert spec.acceptance_length == pytest.approx(1 + sum(spec.position_marginal))
    assert spec.acceptance_length == pytest.approx(spec.avg_tokens_per_step, abs=0.05)
    conditional_0 = spec.position_acceptance[0]
    assert conditional_0 == pytest.approx(spec.position_marginal[0])
    assert spec.tokens_per_step_request_mean is not None
    assert spec.speedup_ci is not None and spec.speedup is not None
    low, high = spec.speedup_ci
    assert low <= spec.speedup <= high
    assert base.speedup_ci is None and base.tokens_per_sec_ci is not None
    assert base.position_marginal == [] and base.acceptance_length == 1.0


def test_report_profile_writes_the_speculation_profile_layout(
    results: list[Path], tmp_path: Path
) -> None:
    import json

    out = tmp_path / "profile.json"
    result = CliRunner().invoke(
        app,
        ["report", str(results[1]), "--no-plots", "--profile", str(out)],
        env={"COLUMNS": "250"},
    )
    assert result.exit_code == 0, result.output
    assert "Acceptance profile" in result.output and "AL (per step)" in result.output
    assert "speedup [95% CI]" in result.output
    profile = json.loads(out.read_text())
    assert profile["schema_version"] == "1.0" and profile["measured"] is True
    assert profile["num_speculative_tokens"] == 4
    assert len(profile["conditional_accept_rates"]) == len(profile["marginal_accept_rates"]) == 4
    assert profile["accept_length_model"] == "chain_analytic"
    assert profile["validation"]["marginal_monotonicity"]["passed"]
    implied = 1 + sum(profile["marginal_accept_rates"])
    assert profile["mean_accept_length"] == pytest.approx(implied, abs=1e-5)
    histogram = profile["acceptance_length_histogram"]
    steps = profile["measurement_conditions"]["steps"]
    assert sum(histogram.values()) == steps
    mean_from_histogram = sum(int(k) * v for k, v in histogram.items()) / steps
    assert mean_from_histogram == pytest.approx(profile["mean_accept_length"], abs=1e-5)


def test_noise_warnings_name_load_and_wide_intervals() -> None:
    from specbench.report.uncertainty import Interval, MachineLoad, noise_warnings

    busy = MachineLoad(cpu_count=2, load_start=3.5, load_end=1.0)
    notes = noise_warnings(1.5, Interval(1.4, 1.6), 10.0, None, busy)
    assert len(notes) == 1 and "overloaded" in notes[0] and "3.5" in notes[0]
    wide = noise_warnings(1.5, Interval(1.0, 2.0), 10.0, None, MachineLoad(2, 0.5, 0.7))
    assert wide == ["speedup interval is +-33%: add prompts or runs"]
    assert noise_warnings(1.5, Interval(1.45, 1.55), 10.0, None, MachineLoad(2, 0.5, 0.7)) == []
    # A run that kept both cores busy ends near load 2: that is the run itself, not noise.
    assert noise_warnings(1.5, Interval(1.45, 1.55), 10.0, None, MachineLoad(2, 0.5, 2.1)) == []
    assert "overloaded" in noise_warnings(1.5, None, 10.0, None, MachineLoad(2, 0.5, 2.8))[0]


def test_paired_bootstrap_resamples_prompts_not_samples() -> None:
    """Two methods whose tok/s move together across prompts: the paired interval of their
    ratio is narrow although each tok/s varies widely between prompts."""
    from specbench.records import SampleRecord
    from specbench.report.uncertainty import speedup_interval, tokens_per_sec_interval

    def sample(method: str, prompt: int, tps: float) -> SampleRecord:
        return SampleRecord.model_construct(
            method=method, prompt_id=f"p{prompt}", tokens_per_sec=tps
        )

    speeds = [10.0, 40.0, 15.0, 80.0, 25.0, 60.0]
    base = [sample("b", i, v) for i, v in enumerate(speeds)]
    fast = [sample("m", i, 1.5 * v) for i, v in enumerate(speeds)]
    ratio = speedup_interval(fast, base)
    assert (
        ratio is not None and ratio.low == pytest.approx(1.5) and ratio.high == pytest.approx(1.5)
    )
    spread = tokens_per_sec_interval(base)
    assert spread is not None and spread.high - spread.low > 10


def test_acceptance_by_position_counts_how_often_each_position_was_reached(
    results: list[Path],
) -> None:
    """A position reached 3 times and accepted 3 times is no 1.00: the plot draws n and a
    Wilson interval per position from the samples' own counts, thin positions greyed."""
    from specbench.report.plots import THIN_POSITION, _position_counts, _wilson
    from specbench.report.results import load_results

    loaded = load_results(results[0])
    samples = [s for s in loaded.samples if s.method == "speculative"]
    counts = _position_counts(samples)
    assert counts[0][1] == sum(s.position_verified[0] for s in samples)
    assert all(accepted <= reached for accepted, reached in counts)
    low, high = _wilson(3, 3)
    assert high == 1.0 and low < 0.5  # 3 of 3 is consistent with a coin
    low, high = _wilson(300, 400)
    assert 0.70 < low < 0.75 < high < 0.80
    assert THIN_POSITION >= 20
