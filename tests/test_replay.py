"""``specbench replay`` gives exactly what a real greedy run of the same drafter measured."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from specbench.cli.main import app
from specbench.plugins import discover_methods
from specbench.presets.schema import load_preset
from specbench.records import SampleRecord, read_records
from specbench.run.replay import load_source, replay
from specbench.run.runner import run_preset

PRESET = """
[models.target]
backend = "toy"
vocab_size = 24
order = 2
seed = 4
eos_bias = -1.0
[[methods]]
name = "baseline"
[[methods]]
name = "suffix"
params = {{ max_spec_factor = {factor}, max_cached_requests = 3 }}
[[methods]]
name = "prompt-lookup"
params = {{ k = 5 }}
[prompts]
source = "inline"
prompts = ["abcabcabc", "the cat sat on the mat", "xyzxyz", "hello hello hello", "qrs"]
[sampling]
temperature = 0.0
max_new_tokens = 40
[runs]
count = 2
warmup = 1
[output]
save_tokens = true
"""


@pytest.fixture(scope="module")
def greedy_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("replay")
    preset = root / "p.toml"
    preset.write_text(PRESET.format(factor=2.0))
    out = root / "run.jsonl"
    run_preset(load_preset(str(preset), discover_methods()), output=out)
    return out


@pytest.mark.parametrize(
    ("method", "params"),
    [("suffix", {"max_spec_factor": 2.0, "max_cached_requests": 3}), ("prompt-lookup", {"k": 5})],
)
def test_replay_matches_a_real_greedy_run_exactly(
    greedy_run: Path, method: str, params: dict
) -> None:
    real = {
        (s.prompt_id, s.run): s
        for s in read_records(greedy_run)
        if isinstance(s, SampleRecord) and s.method == method
    }
    info = discover_methods().get(method)
    (result,) = replay(load_source(greedy_run), info, [("x", info.cls.Params(**params))])
    assert len(result.samples) == len(real) == 10
    stopped_early = 0
    for sample in result.samples:
        mine, theirs = sample.stats, real[(sample.prompt_id, sample.run)]
        assert sample.new_tokens == theirs.new_tokens
        stopped_early += theirs.stop_reason == "eos"
        assert (mine.steps, mine.target_calls, mine.proposed, mine.accepted) == (
            theirs.steps,
            theirs.target_calls,
            theirs.proposed,
            theirs.accepted,
        )
        assert mine.position_verified == theirs.position_verified
        assert mine.position_accepted == theirs.position_accepted
    assert sum(s.stats.accepted for s in result.samples) > 10


def test_replay_cli_sweeps_a_parameter(greedy_run: Path) -> None:
    result = CliRunner().invoke(
        app,
        ["replay", str(greedy_run), "-m", "suffix", "--sweep", "max_spec_factor=0.5,1,4"],
        env={"COLUMNS": "200"},
    )
    assert result.exit_code == 0, result.output
    for label in ("max_spec_factor=0.5", "max_spec_factor=1", "max_spec_factor=4"):
        assert label in result.output


def test_replay_refuses_what_it_cannot_replay(greedy_run: Path, tmp_path: Path) -> None:
    runner = CliRunner()
    cannot = runner.invoke(app, ["replay", str(greedy_run), "-m", "token-recycling"])
    assert cannot.exit_code == 2 and "cannot be replayed" in cannot.output
    bad = runner.invoke(app, ["replay", str(greedy_run), "-m", "suffix", "--set", "max_depth=1"])
    assert bad.exit_code == 2 and "max_depth" in bad.output
    sampled = tmp_path / "sampled.toml"
    sampled.write_text(PRESET.format(factor=1.0).replace("temperature = 0.0", "temperature = 0.7"))
    out = tmp_path / "sampled.jsonl"
    run_preset(load_preset(str(sampled), discover_methods()), output=out)
    refused = runner.invoke(app, ["replay", str(out), "-m", "suffix"])
    assert refused.exit_code == 2 and "greedy" in refused.output
