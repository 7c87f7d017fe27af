"""Configs in other tools' styles: recognised by validate and run, imported into presets that
validate, with a comment for every field that has no equivalent."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from specbench.cli.main import app
from specbench.plugins import discover_methods
from specbench.presets.schema import load_preset

runner = CliRunner()

VLLM_STUDY = """\
model: Qwen/Qwen2.5-Coder-1.5B-Instruct
generation:
  max_tokens: 256
  temperature: 0.0
  top_p: 0.9
  repetition_penalty: 1.1
engine:
  tensor_parallel_size: 2
  gpu_memory_utilization: 0.9
"""

DRAFT_TARGET = """\
draft_model: Qwen/Qwen2.5-Coder-0.5B-Instruct
target_model: Qwen/Qwen2.5-Coder-1.5B-Instruct
k: 4
max_new_tokens: 128
max_length: 2048
dataset:
  path: openai/gsm8k
  name: main
batch_size: 4
device: cuda
quantized: true
"""

SPLIT = {
    "models": {
        "big": {"path": "meta-llama/Llama-3.1-8B-Instruct", "dtype": "bf16", "revision": "main"},
        "small": {"path": "meta-llama/Llama-3.2-1B-Instruct"},
    },
    "methods": {"base": {"type": "baseline"}, "sps4": {"type": "speculative", "k": 4}},
    "experiments": [
        {"name": "chat", "target": "big", "draft": "small", "methods": ["base", "sps4"],
         "dataset": "mt-bench", "max_new_tokens": 128, "temperature": 0},
        {"name": "code", "target": "big", "methods": ["base"], "dataset": "humaneval",
         "num_prompts": 10, "warmup_steps": 3},
    ],
}  # fmt: skip


def _files(tmp_path: Path) -> dict[str, Path]:
    files = {
        "vllm": tmp_path / "study.yaml",
        "draft-target": tmp_path / "dt.yaml",
        "split": tmp_path / "split.json",
    }
    files["vllm"].write_text(VLLM_STUDY)
    files["draft-target"].write_text(DRAFT_TARGET)
    files["split"].write_text(json.dumps(SPLIT))
    return files


@pytest.mark.parametrize(
    ("kind", "shape"),
    [
        ("vllm", "a vLLM study config"),
        ("draft-target", "a draft/target config"),
        ("split", "a JSON file of models, methods and experiments"),
    ],
)
@pytest.mark.parametrize("command", ["validate", "run"])
def test_validate_and_run_say_what_a_foreign_config_is(
    tmp_path: Path, kind: str, shape: str, command: str
) -> None:
    path = _files(tmp_path)[kind]
    args = ["validate", str(path)] if command == "validate" else ["run", "-p", str(path)]
    result = runner.invoke(app, args, env={"COLUMNS": "300"})
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1, result.output
    assert f"this looks like {shape}, not a specbench preset" in lines[0]
    assert f"specbench presets import {path}" in lines[0]
    assert "Extra inputs" not in result.output


def test_a_vllm_study_imports_onto_the_vllm_method(tmp_path: Path) -> None:
    out = tmp_path / "imported.toml"
    result = runner.invoke(
        app, ["presets", "import", str(_files(tmp_path)["vllm"]), "-o", str(out)]
    )
    assert result.exit_code == 0, result.output
    text = out.read_text()
    assert "# not mapped: generation.repetition_penalty = 1.1: no specbench equivalent" in text
    assert "# not mapped: no dataset given: mt-bench was chosen" in text
    resolved = load_preset(str(out), discover_methods())
    (method,) = resolved.methods
    assert method.info.name == "vllm"
    assert method.params.tensor_parallel_size == 2  # type: ignore[attr-defined]
    assert method.params.gpu_memory_utilization == 0.9  # type: ignore[attr-defined]
    sampling = resolved.preset.sampling
    assert (sampling.max_new_tokens, sampling.temperature, sampling.top_p) == (256, 0.0, 0.9)


def test_a_draft_target_config_imports_models_methods_and_prompts(tmp_path: Path) -> None:
    out = tmp_path / "dt.yaml"
    result = runner.invoke(
        app, ["presets", "import", str(_files(tmp_path)["draft-target"]), "-o", str(out)]
    )
    assert result.exit_code == 0, result.output
    assert "# not mapped: max_length = 2048" in out.read_text()
    resolved = load_preset(str(out), discover_methods())
    models = resolved.preset.models
    assert models.target.model == "Qwen/Qwen2.5-Coder-1.5B-Instruct"  # type: ignore[union-attr]
    assert models.draft.model == "Qwen/Qwen2.5-Coder-0.5B-Instruct"  # type: ignore[union-attr]
    assert models.target.device == "cuda"  # type: ignore[union-attr]
    assert models.target.quantization.method == "bnb-4bit"  # type: ignore[union-attr]
    assert [(m.info.name, m.params.batch_size) for m in resolved.methods] == [  # type: ignore[attr-defined]
        ("baseline", 4),
        ("speculative", 4),
    ]
    assert resolved.methods[1].params.k == 4  # type: ignore[attr-defined]
    assert resolved.preset.prompts.source == "gsm8k"
    assert resolved.preset.sampling.max_new_tokens == 128


def test_a_split_json_imports_one_preset_per_experiment(tmp_path: Path) -> None:
    out = tmp_path / "exp.toml"
    result = runner.invoke(
        app, ["presets", "import", str(_files(tmp_path)["split"]), "-o", str(out)]
    )
    assert result.exit_code == 0, result.output
    chat, code = tmp_path / "exp-chat.toml", tmp_path / "exp-code.toml"
    first = load_preset(str(chat), discover_methods())
    assert [(m.label, m.info.name) for m in first.methods] == [
        ("base", "baseline"),
        ("sps4", "speculative"),
    ]
    assert first.preset.models.target.dtype == "bfloat16"  # type: ignore[union-attr]
    assert "# not mapped: models.big.revision = 'main': no specbench equivalent" in chat.read_text()
    second = load_preset(str(code), discover_methods())
    assert second.preset.prompts.source == "humaneval" and second.preset.prompts.limit == 10
    assert "# not mapped: experiments[1].warmup_steps = 3" in code.read_text()


def test_import_refuses_a_specbench_preset_and_an_unknown_shape(tmp_path: Path) -> None:
    result = runner.invoke(app, ["presets", "import", "presets/quickstart.toml"])
    assert result.exit_code == 2 and "is already a specbench preset" in result.output
    odd = tmp_path / "odd.yaml"
    odd.write_text("foo: 1\n")
    result = runner.invoke(app, ["presets", "import", str(odd)])
    assert result.exit_code == 2 and "is in none of the shapes import knows" in result.output


def test_convert_refuses_an_invalid_preset(tmp_path: Path) -> None:
    broken = tmp_path / "broken.toml"
    broken.write_text(
        '[models.target]\nbackend = "toy"\nsead = 1\n[prompts]\nsource = "mt-bench"\n'
    )
    out = tmp_path / "out.yaml"
    result = runner.invoke(app, ["presets", "convert", str(broken), "--to", "yaml", "-o", str(out)])
    assert result.exit_code == 2, result.output
    assert "models.target.sead" in result.output and not out.exists()
    result = runner.invoke(
        app, ["presets", "convert", str(_files(tmp_path)["vllm"]), "--to", "toml"]
    )
    assert result.exit_code == 2 and "presets import" in result.output


def test_a_hub_dataset_id_as_a_prompt_path_names_the_built_in_sets(tmp_path: Path) -> None:
    preset = tmp_path / "hub.toml"
    preset.write_text(
        '[models.target]\nbackend = "toy"\n[prompts]\nsource = "jsonl"\npath = "openai/gsm8k"\n'
    )
    result = runner.invoke(app, ["validate", str(preset)], env={"COLUMNS": "400"})
    assert result.exit_code == 2
    assert "prompt files are local, and openai/gsm8k looks like a hub dataset id" in result.output
    assert "gsm8k" in result.output.split("Fix:")[1] and 'source = "dataset"' in result.output
