"""Dummy models: real architectures at real shapes, random weights, marked in records."""

from __future__ import annotations

from pathlib import Path
from typing import get_args

import pytest
import torch

from specbench.models.dummy import ARCHITECTURES, ByteTokenizer, dummy_config
from specbench.models.specs import DummyArchitecture, DummyModelSpec
from specbench.plugins import discover_methods
from specbench.presets.schema import load_preset
from specbench.records import SampleRecord, SummaryRecord, read_records
from specbench.run.runner import run_preset

REPO = Path(__file__).resolve().parent.parent

# Published parameter counts of the real checkpoints.
PARAMETERS = {
    "llama-3.1-8b": 8.03e9,
    "llama-3.2-3b": 3.21e9,
    "llama-3.2-1b": 1.24e9,
    "qwen2.5-7b": 7.62e9,
    "qwen2.5-1.5b": 1.54e9,
    "qwen2.5-0.5b": 0.49e9,
}


def test_architecture_names_match_the_spec() -> None:
    assert set(ARCHITECTURES) == set(get_args(DummyArchitecture))


@pytest.mark.parametrize("name", sorted(PARAMETERS))
def test_real_shapes_have_the_published_parameter_counts(name: str) -> None:
    from transformers import AutoModelForCausalLM

    config = dummy_config(DummyModelSpec(architecture=name))  # type: ignore[arg-type]
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    count = sum(p.numel() for p in model.parameters())
    assert count == pytest.approx(PARAMETERS[name], rel=0.02)


def test_byte_tokenizer_round_trip() -> None:
    tokenizer = ByteTokenizer(512)
    ids = tokenizer.encode("héllo")
    assert ids[0] == 1 and max(ids) < 259
    assert tokenizer.decode(ids) == "héllo"


def test_dummy_runs_are_marked_synthetic_and_dummy(tmp_path: Path) -> None:
    resolved = load_preset(str(REPO / "presets" / "dummy-tiny.toml"), discover_methods())
    out = tmp_path / "d.jsonl"
    run_preset(resolved, output=out)
    records = read_records(out)
    header = records[0]
    assert header.models["target"]["dummy"] is True
    samples = [r for r in records if isinstance(r, SampleRecord)]
    speculative = [s for s in samples if s.method == "speculative"]
    assert all(s.synthetic and not s.exact for s in speculative)
    assert all(s.matches_baseline is None for s in speculative)  # nothing to compare
    assert all(not s.synthetic and s.exact for s in samples if s.method == "baseline")
    summary = {r.method: r for r in records if isinstance(r, SummaryRecord)}["speculative"]
    assert summary.synthetic and 0.6 < (summary.acceptance_rate or 0) < 0.95


def test_gpu_preset_validates_without_a_gpu() -> None:
    resolved = load_preset(str(REPO / "presets" / "dummy-llama8b.toml"), discover_methods())
    assert [m.label for m in resolved.methods] == [
        "baseline",
        "speculative-k4-a0.7",
        "speculative-k4-a0.85",
    ]
