"""Medusa heads: the hub layout round-trips, wrong heads fail in one line, the heads read the
target's hidden state of the right position (from the verification call), and the method is
exact: greedy token for token, sampling by a chi-square test (ALPHA = 1e-3, fixed seeds)."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import torch
from helpers import hf_pair, make_method, request
from stats_utils import chi_square_pvalue

pytest.importorskip("transformers")

import itertools

from specbench.errors import ModelLoadError
from specbench.heads.medusa import MedusaConfig, MedusaHeads, load_medusa, save_medusa
from specbench.methods.medusa import MedusaDrafter

ALPHA = 1e-3


def _random_heads(
    hidden: int, vocab: int, heads: int = 3, layers: int = 1, seed: int = 0
) -> MedusaHeads:
    torch.manual_seed(seed)
    model = MedusaHeads(MedusaConfig(heads, layers, hidden, vocab))
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.normal_(0, 0.5)
    return model.eval()


@pytest.fixture(scope="module")
def pair(tiny_hf: dict[str, Any]) -> Any:
    return hf_pair(tiny_hf)


@pytest.fixture(scope="module")
def heads_folder(tmp_path_factory: pytest.TempPathFactory, pair: Any) -> Path:
    config = pair.target.model.config
    folder = tmp_path_factory.mktemp("medusa")
    save_medusa(_random_heads(config.hidden_size, config.vocab_size), folder, "tiny-llama")
    return folder


def test_hub_layout_round_trips_in_safetensors_and_pt(tmp_path: Path) -> None:
    heads = _random_heads(16, 40, heads=4, layers=2)
    save_medusa(heads, tmp_path / "st")
    loaded = load_medusa(str(tmp_path / "st"))
    assert loaded.config == MedusaConfig(4, 2, 16, 40, None)
    x = torch.randn(3, 16)
    assert torch.equal(loaded(x), heads(x))
    # The original repository's layout: a .pt state dict, keys optionally prefixed.
    pt = tmp_path / "pt"
    pt.mkdir()
    state = {f"medusa_head.{k}": v for k, v in heads.heads.state_dict().items()}
    torch.save(state, pt / "medusa_lm_head.pt")
    (pt / "config.json").write_text(json.dumps({"medusa_num_heads": 4, "medusa_num_layers": 2}))
    assert torch.equal(load_medusa(str(pt))(x), heads(x))


def test_wrong_heads_fail_in_one_line(tmp_path: Path, pair: Any) -> None:
    save_medusa(_random_heads(32, 300), tmp_path / "small")
    with pytest.raises(ModelLoadError, match="read hidden size 32, the target has 64"):
        make_method("medusa", pair, heads=str(tmp_path / "small"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelLoadError, match=r"has no config\.json"):
        load_medusa(str(tmp_path / "empty"))
    bad = tmp_path / "bad"
    save_medusa(_random_heads(16, 40, heads=2), bad)
    (bad / "config.json").write_text(json.dumps({"medusa_num_heads": 3, "medusa_num_layers": 1}))
    with pytest.raises(ModelLoadError, match="do not fit 3 heads x 1 layers"):
        load_medusa(str(bad))
    with pytest.raises(ModelLoadError, match="could not be found"):
        load_medusa("nobody/no-such-medusa-heads", local_only=True)


@pytest.fixture(scope="module")
def small_medusa(tiny_hf: dict[str, Any], tmp_path_factory: pytest.TempPathFactory) -> Any:
    """The 12-token target of the HF exactness tests, with heads that guess "the same token
    again" (the target's own projection): often right, often wrong, so drafts are both
    accepted and rejected."""
    from hf_fixtures import build_model
    from test_hf_exactness import VOCAB

    from specbench.models.hf.model import HFLanguageModel
    from specbench.models.hf.tokenizer import HFTokenizer
    from specbench.plugins import MethodModels

    target = build_model("llama", VOCAB, seed=3)
    with torch.no_grad():
        target.lm_head.weight.mul_(0.25)
    models = MethodModels(target=HFLanguageModel(target, HFTokenizer(tiny_hf["tokenizer"]), "t"))
    heads = MedusaHeads(MedusaConfig(2, 1, target.config.hidden_size, VOCAB))
    with torch.no_grad():
        for head in heads.heads:
            head[0].linear.weight.zero_()
            head[0].linear.bias.fill_(-30.0)  # SiLU(-30) ~ 0: the block passes x through
            head[1].weight.copy_(target.lm_head.weight)
    folder = save_medusa(heads, tmp_path_factory.mktemp("same-token-heads"))
    return models, target, make_method("medusa", models, heads=str(folder))


def test_heads_read_the_hidden_state_of_the_committed_position(small_medusa: Any) -> None:
    _models, target, method = small_medusa
    drafter: MedusaDrafter = method.drafter
    seen: list[tuple[list[int], torch.Tensor]] = []
    original_propose = drafter.propose_row

    def propose_row(slot: Any) -> Any:
        hidden = drafter._hidden[slot.row]
        if hidden is not None:
            seen.append((list(slot.sequence), hidden.clone()))
        return original_propose(slot)

    drafter.propose_row = propose_row  # type: ignore[method-assign]
    try:
        for seed in range(5):
            method.generate(request([3, 7, 1], 16, seed, temperature=1.0))
    finally:
        drafter.propose_row = original_propose  # type: ignore[method-assign]
    steps = [len(b) - len(a) for (a, _), (b, _) in itertools.pairwise(seen)]
    assert any(step > 1 for step in steps)  # some steps accepted drafts: rows other than 0
    for sequence, hidden in seen:
        # The state whose logits gave the last committed token: position len - 2.
        with torch.no_grad():
            out = target(torch.tensor([sequence[:-1]]), output_hidden_states=True)
        assert torch.allclose(hidden, out.hidden_states[-1][0, -1].float(), atol=1e-4)


def test_medusa_greedy_equals_the_baseline_token_for_token(pair: Any, heads_folder: Path) -> None:
    baseline = make_method("baseline", pair)
    medusa = make_method("medusa", pair, heads=str(heads_folder), k=2)
    for prompt in ([5, 9, 23, 7], [40, 41, 42, 43], [100, 3, 17]):
        ours = medusa.generate(request(prompt, 24))
        assert ours.tokens == baseline.generate(request(prompt, 24)).tokens
        assert ours.stats.proposed > 0


def test_medusa_trees_equal_the_baseline_token_for_token(pair: Any, heads_folder: Path) -> None:
    baseline = make_method("baseline", pair)
    medusa = make_method("medusa", pair, heads=str(heads_folder), tree=True, top_k=3, budget=10)
    for prompt in ([5, 9, 23, 7], [40, 41, 42, 43], [100, 3, 17]):
        ours = medusa.generate(request(prompt, 24))
        assert ours.tokens == baseline.generate(request(prompt, 24)).tokens
        assert ours.stats.proposed > 0 and ours.stats.extra["tree_size"] <= 10


def test_medusa_tree_sampling_matches_the_target(small_medusa: Any, tmp_path: Path) -> None:
    from test_hf_exactness import LENGTH, PROMPT, _exact_joint, _pair_probs

    from specbench.decoding.sampling import SamplingParams

    models, target, chain_method = small_medusa
    folder = save_medusa(chain_method.drafter.heads, tmp_path / "heads")
    method = make_method("medusa", models, heads=str(folder), tree=True, top_k=3, budget=6)
    joint = _exact_joint(target, SamplingParams(temperature=1.0, top_p=1.0))
    counts: dict[int, Counter[Any]] = {0: Counter(), 2: Counter()}
    accepted = 0
    for seed in range(2500):
        result = method.generate(request(PROMPT, LENGTH, seed, 1.0, None, 1.0))
        accepted += result.stats.accepted
        for first in counts:
            counts[first][tuple(result.tokens[first : first + 2])] += 1
    assert accepted > 100
    pvalues = [chi_square_pvalue(counts[f], _pair_probs(joint, f)) for f in counts]
    assert min(pvalues) > ALPHA / len(pvalues), pvalues


def test_medusa_sampling_matches_the_target(small_medusa: Any) -> None:
    from test_hf_exactness import LENGTH, PROMPT, _exact_joint, _pair_probs

    from specbench.decoding.sampling import SamplingParams

    _, target, method = small_medusa
    joint = _exact_joint(target, SamplingParams(temperature=1.0, top_p=1.0))
    counts: dict[int, Counter[Any]] = {0: Counter(), 2: Counter()}
    accepted = rejected = 0
    for seed in range(2500):
        result = method.generate(request(PROMPT, LENGTH, seed, 1.0, None, 1.0))
        accepted += result.stats.accepted
        rejected += result.stats.rejections
        for first in counts:
            counts[first][tuple(result.tokens[first : first + 2])] += 1
    assert accepted > 100 and rejected > 100
    pvalues = [chi_square_pvalue(counts[f], _pair_probs(joint, f)) for f in counts]
    assert min(pvalues) > ALPHA / len(pvalues), pvalues


def test_typical_acceptance_is_offered_as_lossy_and_is(small_medusa: Any, tmp_path: Path) -> None:
    from test_hf_exactness import LENGTH, PROMPT, _exact_joint, _pair_probs

    from specbench.decoding.sampling import SamplingParams
    from specbench.methods.medusa import MedusaTypicalMethod

    models, target, exact_method = small_medusa
    folder = save_medusa(exact_method.drafter.heads, tmp_path / "heads")
    typical = make_method("medusa-typical", models, heads=str(folder))
    assert isinstance(typical, MedusaTypicalMethod) and typical.exact is False
    assert exact_method.exact is True
    joint = _exact_joint(target, SamplingParams(temperature=1.0, top_p=1.0))
    counts: Counter[Any] = Counter()
    for seed in range(2500):
        result = typical.generate(request(PROMPT, LENGTH, seed, 1.0, None, 1.0))
        counts[tuple(result.tokens[2:4])] += 1
    # Tokens above the threshold are kept outright instead of with probability p: the
    # output leaves the target's distribution (what the exact default guards against).
    assert chi_square_pvalue(counts, _pair_probs(joint, 2)) < 1e-6


def test_heads_train_caches_and_runs_use_the_trained_heads(
    tiny_hf: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from typer.testing import CliRunner

    from specbench.cli.main import app
    from specbench.records import SampleRecord, read_records

    monkeypatch.setenv("SPECBENCH_CACHE", str(tmp_path / "cache"))
    preset = tmp_path / "medusa.toml"
    preset.write_text(
        f"""
name = "medusa-tiny"
[models.target]
backend = "hf"
model = "{tiny_hf["llama"]["target"]}"
dtype = "float32"
device = "cpu"
[[methods]]
name = "baseline"
[[methods]]
name = "medusa"
params = {{ num_heads = 2, train_texts = 10, answer_tokens = 24, train_steps = 60 }}
[prompts]
source = "inline"
prompts = ["def add(a, b):", "hello there"]
[sampling]
temperature = 0.0
max_new_tokens = 16
"""
    )
    runner = CliRunner()
    # Without trained heads a run stops at once, naming the command that trains them.
    missing = runner.invoke(app, ["run", "-p", str(preset), "-o", str(tmp_path / "a.jsonl")])
    assert missing.exit_code != 0
    assert "specbench train -p" in " ".join(missing.output.split())
    trained = runner.invoke(app, ["heads", "train", "-p", str(preset)])
    assert trained.exit_code == 0, trained.output
    assert "holdout top-1 per head" in trained.output
    listed = runner.invoke(app, ["heads", "list"])
    assert "2 heads x 1 blocks" in listed.output and "medusa" in listed.output
    (folder,) = [p for p in (tmp_path / "cache" / "heads").iterdir() if (p / "meta.json").is_file()]
    # The target's answers and states are cached apart from the heads (shared with EAGLE-3).
    assert any(p.name.endswith(".features") for p in folder.parent.iterdir())
    meta = json.loads((folder / "meta.json").read_text())
    assert meta["train_texts"] == 9 and meta["holdout_texts"] == 1
    assert len(meta["holdout_top1"]) == 2 and not (folder.parent / f"{folder.name}.work").exists()
    assert load_medusa(str(folder)).config.num_heads == 2  # Medusa's hub layout
    # A second train finds them; a run uses them, token for token equal to the baseline.
    again = runner.invoke(app, ["heads", "train", "-p", str(preset)])
    assert "step" not in again.output
    out = tmp_path / "run.jsonl"
    ran = runner.invoke(app, ["run", "-p", str(preset), "-o", str(out), "-q"])
    assert ran.exit_code == 0, ran.output
    medusa = [r for r in read_records(out) if isinstance(r, SampleRecord) and r.method == "medusa"]
    assert all(r.matches_baseline for r in medusa) and sum(r.proposed for r in medusa) > 0
    cleared = runner.invoke(app, ["heads", "clear", "--all"])
    assert "deleted 1" in cleared.output
