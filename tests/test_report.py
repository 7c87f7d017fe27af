"""Reports: Spec-Bench style category table, several files, PNG plots."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from specbench.cli.main import app
from specbench.plugins import discover_methods
from specbench.presets import load_preset
from specbench.report import category_table, load_results
from specbench.runner import run_preset

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
