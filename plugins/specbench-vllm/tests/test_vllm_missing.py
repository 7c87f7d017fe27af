"""Without vLLM installed (the main environment), a vllm row fails with one line that says
where to get it, and the plugin itself still loads."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

pytest.importorskip("specbench_vllm")
if importlib.util.find_spec("vllm") is not None:
    pytest.skip("vLLM is installed here", allow_module_level=True)

from specbench.errors import SpecbenchError
from specbench.plugins import discover_methods
from specbench.presets.schema import load_preset
from specbench.run.runner import run_preset


def test_a_missing_vllm_is_one_line_naming_the_install(tmp_path: Path) -> None:
    preset = tmp_path / "p.toml"
    preset.write_text(
        """
[models.target]
backend = "toy"
[[methods]]
name = "vllm"
[prompts]
source = "inline"
prompts = ["abc"]
[runs]
baseline = "vllm"
"""
    )
    assert "vllm" in discover_methods().methods
    with pytest.raises(SpecbenchError) as error:
        run_preset(load_preset(str(preset), discover_methods()), tmp_path / "out.jsonl")
    assert error.value.message.startswith("vLLM is not importable here")
    assert "plugins/specbench-vllm/README.md" in (error.value.hint or "")
