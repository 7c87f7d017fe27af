"""``specbench audit``: its tests pass every built-in exact method and fail broken ones.

Sampling audits run at the audit's own family-wise level (ALPHA below, Bonferroni inside the
audit) with fixed seeds; the broken methods are installed as a third-party plugin would be
(a distribution with ``specbench.methods`` entry points) and must fail with their statistic.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from presets_for_tests import write_audit_toy_preset, write_tiny_hf_sampling_preset
from typer.testing import CliRunner

from specbench.audit.run import AuditOptions, audit_preset
from specbench.audit.stats import chi2_sf, goodness_of_fit, homogeneity, ranked_draws
from specbench.cli.main import app
from specbench.plugins import discover_methods
from specbench.presets.schema import load_preset
from specbench.records import AuditRecord, read_records

ALPHA = 0.01


def _methods(*entries: str) -> list[str]:
    return list(entries)


def _preset(tmp_path: Path, methods: list[str], temperature: float = 0.9, distance: float = 1.0,
            top_k: int = 10, top_p: float = 0.95) -> Path:  # fmt: skip
    return write_audit_toy_preset(
        tmp_path / "audit-toy.toml", methods, temperature, distance, top_k, top_p
    )


def _audit(path: Path, tmp_path: Path, output: str = "audit.jsonl", **options: object):
    resolved = load_preset(str(path), discover_methods())
    return audit_preset(resolved, AuditOptions(**options), tmp_path / output)  # type: ignore[arg-type]


# ----------------------------------------------------------------------------- the statistics


def test_chi2_sf_matches_scipy() -> None:
    scipy_stats = pytest.importorskip("scipy.stats")
    for statistic, df in ((0.5, 1), (3.84, 1), (12.0, 7), (40.0, 20)):
        assert chi2_sf(statistic, df) == pytest.approx(scipy_stats.chi2.sf(statistic, df), rel=1e-9)
    assert chi2_sf(math.inf, 3) == 0.0


def _draws_from(probs: torch.Tensor, n: int, seed: int) -> list[int]:
    generator = torch.Generator().manual_seed(seed)
    return torch.multinomial(probs, n, replacement=True, generator=generator).tolist()


def test_goodness_of_fit_passes_exact_draws_and_fails_wrong_ones() -> None:
    p = torch.softmax(torch.randn(40, generator=torch.Generator().manual_seed(0)) * 1.5, 0)
    wrong = torch.softmax(
        torch.log(p) + 0.3 * torch.randn(40, generator=torch.Generator().manual_seed(1)), 0
    )
    p_values = []
    for seed in range(20):
        result = goodness_of_fit(ranked_draws(p, _draws_from(p, 2000, seed)), "exact")
        assert result is not None
        p_values.append(result.p_value)
    # Under the null the p-values are uniform: none tiny, and not all large.
    assert min(p_values) > ALPHA / 20
    assert np.mean(p_values) == pytest.approx(0.5, abs=0.2)
    broken = goodness_of_fit(ranked_draws(p, _draws_from(wrong, 2000, 99)), "wrong")
    assert broken is not None and broken.p_value < 1e-6


def test_goodness_of_fit_with_a_different_conditional_per_draw() -> None:
    """Position > 0: each draw has its own exact conditional; the test stays calibrated."""
    generator = torch.Generator().manual_seed(5)
    rows = torch.softmax(torch.randn(50, 30, generator=generator) * 2, -1)
    p_values = []
    for seed in range(10):
        draws = []
        for i, row in enumerate(rows):
            draws += ranked_draws(row, _draws_from(row, 40, seed * 100 + i))
        result = goodness_of_fit(draws, "mixed")
        assert result is not None
        p_values.append(result.p_value)
    assert min(p_values) > ALPHA / 10
    # Draws that always follow the first row's distribution do not fit the others.
    draws = []
    for i, row in enumerate(rows):
        draws += ranked_draws(row, _draws_from(rows[0], 40, 1000 + i))
    result = goodness_of_fit(draws, "mixed-wrong")
    assert result is not None and result.p_value < 1e-6


def test_goodness_of_fit_flags_an_impossible_token() -> None:
    p = torch.tensor([0.5, 0.5, 0.0])
    result = goodness_of_fit(ranked_draws(p, [0, 1] * 50 + [2]), "impossible")
    assert result is not None and result.p_value == 0.0 and "probability 0" in result.detail


def test_homogeneity_passes_same_source_and_fails_different() -> None:
    p = torch.softmax(torch.randn(20, generator=torch.Generator().manual_seed(2)), 0)
    q = torch.softmax(torch.randn(20, generator=torch.Generator().manual_seed(3)), 0)
    same = homogeneity(
        [(t,) for t in _draws_from(p, 1500, 1)], [(t,) for t in _draws_from(p, 1500, 2)], "same"
    )
    other = homogeneity(
        [(t,) for t in _draws_from(p, 1500, 1)], [(t,) for t in _draws_from(q, 1500, 2)], "other"
    )
    assert same is not None and same.p_value > ALPHA
    assert other is not None and other.p_value < 1e-6


# ----------------------------------------------------------------------------- sampling audits


def test_audit_passes_every_builtin_exact_method_on_a_toy_pair(tmp_path: Path) -> None:
    methods = _methods(
        'name = "baseline"',
        'name = "speculative"\nparams = { k = 3 }',
        'name = "specexec"\nparams = { budget = 8, max_depth = 4 }',
        'name = "prompt-lookup"',
    )
    outcome = _audit(_preset(tmp_path, methods), tmp_path, samples=800, alpha=ALPHA)
    verdicts = {r.method: r.verdict for r in outcome.records}
    assert verdicts == dict.fromkeys(
        ("baseline", "speculative", "specexec", "prompt-lookup"), "pass"
    )
    assert outcome.mode == "sampling" and outcome.tests >= 4 * 2 * 2
    records = read_records(outcome.output)
    audits = [r for r in records if isinstance(r, AuditRecord)]
    assert [r.method for r in audits] == list(verdicts)
    assert all(
        r.p_value is not None and r.alpha == pytest.approx(ALPHA / outcome.tests) for r in audits
    )


def test_audit_passes_speculative_on_a_tiny_hf_pair(tiny_hf: dict, tmp_path: Path) -> None:
    path = write_tiny_hf_sampling_preset(
        tmp_path / "hf.toml", tiny_hf["llama"], 'name = "speculative"\nparams = { k = 2 }'
    )
    outcome = _audit(path, tmp_path, samples=400, tokens=2, prompts=1, alpha=ALPHA)
    (record,) = outcome.records
    assert record.verdict == "pass", record.detail


@pytest.mark.usefixtures("broken_plugin")
@pytest.mark.parametrize("broken", ["accept-all", "resample-p"])
def test_cli_audit_fails_a_broken_plugin_with_its_statistic(tmp_path: Path, broken: str) -> None:
    methods = _methods('name = "baseline"', 'name = "speculative"', f'name = "{broken}"')
    path = _preset(tmp_path, methods, distance=1.5)
    out = tmp_path / "audit.jsonl"
    result = CliRunner().invoke(
        app, ["audit", "-p", str(path), "--samples", "1500", "-o", str(out), "-q"]
    )
    assert result.exit_code == 1, result.output
    assert f"audit failed: {broken}" in " ".join(result.output.split())
    records = {r.method: r for r in read_records(out) if isinstance(r, AuditRecord)}
    assert records["baseline"].verdict == "pass"
    assert records["speculative"].verdict == "pass"
    bad = records[broken]
    assert bad.verdict == "fail"
    assert bad.statistic is not None and bad.p_value is not None and bad.p_value < bad.alpha  # type: ignore[operator]


@pytest.mark.usefixtures("broken_plugin")
def test_engine_methods_are_audited_against_their_own_plain_decoding(tmp_path: Path) -> None:
    methods = _methods(
        'name = "fake-engine"\nlabel = "engine-spec"\nparams = { speculative = true }',
        'name = "fake-engine"\nlabel = "engine-broken"\nparams = { speculative = true, broken = true }',
    )
    outcome = _audit(_preset(tmp_path, methods, distance=1.5), tmp_path, samples=1500, alpha=ALPHA)
    records = {r.method: r for r in outcome.records}
    assert records["engine-spec"].verdict == "pass", records["engine-spec"].detail
    assert records["engine-broken"].verdict == "fail"
    assert "two-sample" in records["engine-broken"].test


def test_synthetic_and_lossy_methods_are_listed_not_audited(tmp_path: Path) -> None:
    methods = _methods(
        'name = "baseline"',
        'name = "speculative"\nlabel = "synthetic"\nparams = { synthetic_acceptance = 1.0 }',
    )
    path = _preset(tmp_path, methods, temperature=0.0, distance=4.0)
    outcome = _audit(path, tmp_path, tokens=10)
    (record,) = [r for r in outcome.records if r.method == "synthetic"]
    assert record.verdict == "lossy" and record.divergence is not None and record.divergence > 0
    assert "differ from the baseline" in record.detail
    assert not outcome.failed


# ----------------------------------------------------------------------------- greedy audits


def test_greedy_audit_passes_exact_methods_token_for_token(tmp_path: Path) -> None:
    methods = _methods(
        'name = "baseline"',
        'name = "speculative"\nparams = { k = 4 }',
        'name = "specexec"',
        'name = "prompt-lookup"',
        'name = "suffix"',
        'name = "lookahead"',
        'name = "token-recycling"',
    )
    outcome = _audit(_preset(tmp_path, methods, temperature=0.0), tmp_path)
    assert outcome.mode == "greedy"
    exact = ("speculative", "specexec", "prompt-lookup", "suffix", "lookahead", "token-recycling")
    assert {r.method: r.verdict for r in outcome.records} == dict.fromkeys(exact, "pass")
    assert all("2/2 outputs identical" in r.detail for r in outcome.records)


@pytest.mark.usefixtures("broken_plugin")
def test_greedy_audit_tells_a_bug_from_a_near_tie(tmp_path: Path) -> None:
    methods = _methods('name = "baseline"', 'name = "accept-all"')
    path = _preset(tmp_path, methods, temperature=0.0, distance=1.5)
    (bug,) = _audit(path, tmp_path).records
    assert bug.verdict == "fail"
    assert "first difference at token" in bug.detail and "a bug" in bug.detail
    assert bug.statistic is not None and bug.statistic > 0.01
    # The same difference judged with a tolerance larger than its margin is a near-tie.
    (tie,) = _audit(path, tmp_path, output="tie.jsonl", tie_margin=1e6).records
    assert tie.verdict == "near-tie" and "numerical near-tie" in tie.detail


def test_audit_cli_writes_a_table_and_jsonl(tmp_path: Path) -> None:
    methods = _methods('name = "baseline"', 'name = "speculative"')
    out = tmp_path / "a.jsonl"
    result = CliRunner().invoke(
        app,
        ["audit", "-p", str(_preset(tmp_path, methods)), "--samples", "300", "-o", str(out)],
        env={"COLUMNS": "200"},
    )
    assert result.exit_code == 0, result.output
    assert "speculative" in result.output and "pass" in result.output
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert [line["record"] for line in lines] == ["run", "audit", "audit", "run_end"]


def test_audit_skips_simulated_costs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Toy costs are simulated by sleeping; the audit, which times nothing, skips them."""
    path = _preset(tmp_path, _methods('name = "baseline"'))
    text = path.read_text().replace("sharpness = 1.2\n", "sharpness = 1.2\nforward_ms = 50\n", 1)
    path.write_text(text)
    sleeps: list[float] = []
    monkeypatch.setattr("specbench.models.toy.time.sleep", sleeps.append)
    _audit(path, tmp_path, samples=50, prompts=1)
    assert sleeps == []


def test_audit_never_appends_to_an_existing_file(tmp_path: Path) -> None:
    from specbench.errors import SpecbenchError

    path = _preset(tmp_path, _methods('name = "baseline"'))
    _audit(path, tmp_path, samples=20, prompts=1)
    with pytest.raises(SpecbenchError, match="already holds results"):
        _audit(path, tmp_path, samples=20, prompts=1)


@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_audit_passes_trained_head_methods(
    tiny_hf: dict, tmp_path: Path, temperature: float
) -> None:
    """EAGLE-3 chains and trees and Medusa trees, through ``specbench audit`` itself."""
    from hf_fixtures import eagle3_echo_head

    from specbench.heads.eagle3 import save_eagle3

    target = tiny_hf["llama"]["target_model"]
    head = save_eagle3(eagle3_echo_head(target, (0, 1, 1)), tmp_path / "head")
    path = tmp_path / "heads.toml"
    path.write_text(
        f"""
[models.target]
backend = "hf"
model = "{tiny_hf["llama"]["target"]}"
dtype = "float32"
device = "cpu"
[[methods]]
name = "baseline"
[[methods]]
name = "eagle3"
params = {{ head = "{head}", k = 2 }}
[[methods]]
name = "eagle3"
label = "eagle3-tree"
params = {{ head = "{head}", tree = true, depth = 2, budget = 4 }}
[prompts]
source = "inline"
prompts = ["hello world", "def add(a, b):"]
chat_template = false
[sampling]
temperature = {temperature}
top_k = 20
max_new_tokens = 8
"""
    )
    outcome = _audit(path, tmp_path, samples=400, tokens=2, prompts=1, alpha=ALPHA)
    verdicts = {r.method: r.verdict for r in outcome.records if r.method != "baseline"}
    assert verdicts == {"eagle3": "pass", "eagle3-tree": "pass"}, [
        r.detail for r in outcome.records
    ]


def test_the_verdict_table_keeps_one_line_per_test_and_notes_identical_samples(
    tmp_path: Path,
) -> None:
    """Bin counts go to the JSONL, not the table; methods that draw the very same samples
    (shared seeds) are named as such; the caption says how much was tested."""
    import json

    from typer.testing import CliRunner

    from specbench.cli.main import app

    out = tmp_path / "audit.jsonl"
    result = CliRunner().invoke(
        app,
        ["audit", "-p", "quickstart", "--samples", "300", "--methods", "speculative,suffix,lookahead",
         "-o", str(out)],
        env={"COLUMNS": "250"},
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    rows = [line for line in result.output.splitlines() if line.startswith("│")]
    assert len(rows) == 3  # one line per method
    assert "observed [" not in result.output
    text = " ".join(result.output.split())
    assert "on 2 prompts x 300 samples, the first 3 tokens of each" in text
    assert "lookahead, suffix drew identical samples" in text
    records = [json.loads(line) for line in out.read_text().splitlines()]
    tests = [t for r in records if r["record"] == "audit" for t in r["tests"]]
    assert tests and all(len(t["observed"]) == len(t["expected"]) for t in tests)
