"""EAGLE-3 heads: both hub layouts load (and round-trip), wrong heads fail in one line, the
head reads the inputs of the right target layers from the verification call, its cache matches
a from-scratch pass, and the method is exact: chains and EAGLE-2 trees equal greedy decoding
token for token, and sampling passes a chi-square test (ALPHA = 1e-3, fixed seeds)."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import torch
from helpers import hf_pair, make_method, request
from hf_fixtures import eagle3_echo_head as echo_head
from stats_utils import chi_square_pvalue

pytest.importorskip("transformers")

from specbench.errors import ModelLoadError
from specbench.heads.eagle3 import Eagle3Config, Eagle3Head, load_eagle3, save_eagle3
from specbench.models.hf.capture import LayerInputCapture

ALPHA = 1e-3


def _config(
    hidden: int, vocab: int, draft_vocab: int, layers: tuple[int, ...], **extra: Any
) -> Eagle3Config:
    return Eagle3Config(
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=vocab,
        draft_vocab_size=draft_vocab,
        target_hidden_size=hidden,
        max_position_embeddings=1024,
        aux_layer_ids=layers,
        **extra,
    )


def random_head(config: Eagle3Config, seed: int = 0) -> Eagle3Head:
    generator = torch.Generator().manual_seed(seed)
    head = Eagle3Head(config)
    with torch.no_grad():
        for parameter in head.parameters():
            parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.3)
        # A reduced draft vocabulary: every other target id, mapped by d2t.
        ids = torch.arange(config.draft_vocab_size) * (config.vocab_size // config.draft_vocab_size)
        head.d2t.copy_(ids - torch.arange(config.draft_vocab_size))
        head.t2d.zero_()
        head.t2d[ids] = True
    return head.eval()


@pytest.fixture(scope="module")
def pair(tiny_hf: dict[str, Any]) -> Any:
    return hf_pair(tiny_hf)


@pytest.mark.parametrize("layout", ["speculators", "flat"])
def test_both_hub_layouts_round_trip(tmp_path: Path, layout: str) -> None:
    config = _config(32, 40, 20, (0, 1, 1), rope_scaling=None)
    head = random_head(config)
    folder = save_eagle3(head, tmp_path / layout, "org/target", ["LlamaForCausalLM"], layout=layout)
    raw = json.loads((folder / "config.json").read_text())
    from safetensors.torch import load_file

    keys = set(load_file(str(folder / "model.safetensors")))
    if layout == "speculators":
        assert raw["speculators_model_type"] == "eagle3"
        assert raw["transformer_layer_config"]["hidden_size"] == 32
        assert raw["draft_vocab_size"] == 20 and raw["target_hidden_size"] == 32
        assert raw["eagle_aux_hidden_state_layer_ids"] == [0, 1, 1]
        assert raw["speculators_config"]["verifier"]["name_or_path"] == "org/target"
        assert "layers.0.self_attn.q_proj.weight" in keys
    else:
        assert raw["architectures"] == ["LlamaForCausalLMEagle3"]
        assert "midlayer.hidden_norm.weight" in keys
    assert {"fc.weight", "norm.weight", "lm_head.weight", "d2t", "t2d"} <= keys
    loaded = load_eagle3(str(folder))
    assert loaded.config.layout == layout
    assert torch.equal(loaded.d2t, head.d2t) and torch.equal(loaded.t2d, head.t2d)
    embeds, hidden = torch.randn(5, 32), torch.randn(5, 32)
    positions = torch.arange(3, 8)
    assert torch.allclose(loaded(embeds, hidden, positions), head(embeds, hidden, positions))


def test_a_flat_checkpoint_from_the_eagle_repository_loads(tmp_path: Path) -> None:
    """The EAGLE repository's own files: pytorch_model.bin, ``midlayer.`` keys, a flat
    Llama config with rope scaling, no aux layer ids (vLLM's defaults then apply)."""
    config = _config(32, 40, 20, (0, 1, 1))
    head = random_head(config)
    folder = tmp_path / "eagle"
    folder.mkdir()
    state = {k.replace("layers.0.", "midlayer."): v for k, v in head.state_dict().items()}
    torch.save(state, folder / "pytorch_model.bin")
    raw = config.layer_config() | {
        "architectures": ["LlamaForCausalLMEagle3"],
        "draft_vocab_size": 20,
        "rope_scaling": {
            "rope_type": "llama3",
            "factor": 8.0,
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
            "original_max_position_embeddings": 512,
        },
    }
    (folder / "config.json").write_text(json.dumps(raw))
    loaded = load_eagle3(str(folder))
    assert loaded.config.aux_layer_ids is None and loaded.config.norm_before_residual is False
    assert loaded.config.rope_scaling is not None
    from specbench.heads.eagle3 import aux_layers

    assert aux_layers(loaded, 32) == (2, 16, 29)


def test_wrong_heads_fail_in_one_line(tmp_path: Path, pair: Any) -> None:
    target_config = pair.target.model.config
    narrow = save_eagle3(random_head(_config(32, 300, 100, (0, 1, 1))), tmp_path / "narrow")
    with pytest.raises(ModelLoadError, match="reads target hidden size 32, the target has 64"):
        make_method("eagle3", pair, head=str(narrow))
    vocab = target_config.vocab_size
    other = save_eagle3(random_head(_config(64, vocab + 10, 64, (0, 1, 1))), tmp_path / "vocab")
    with pytest.raises(ModelLoadError, match=f"vocabulary, the target has {vocab}"):
        make_method("eagle3", pair, head=str(other))
    deep = save_eagle3(random_head(_config(64, vocab, 64, (0, 1, 7))), tmp_path / "deep")
    with pytest.raises(ModelLoadError, match="reads layer 7; the target has 2"):
        make_method("eagle3", pair, head=str(deep))
    medusa = tmp_path / "medusa"
    medusa.mkdir()
    (medusa / "config.json").write_text(json.dumps({"architectures": ["MedusaModel"]}))
    with pytest.raises(ModelLoadError, match="is not an EAGLE-3 config"):
        load_eagle3(str(medusa))
    (medusa / "config.json").write_text(json.dumps({"speculators_model_type": "mlp"}))
    with pytest.raises(ModelLoadError, match="speculators 'mlp' checkpoint, not EAGLE-3"):
        load_eagle3(str(medusa))
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ModelLoadError, match=r"has no config\.json"):
        load_eagle3(str(empty))
    with pytest.raises(ModelLoadError, match="could not be found"):
        load_eagle3("nobody/no-such-eagle3-head", local_only=True)


def test_capture_reads_the_inputs_of_the_named_layers(tiny_hf: dict[str, Any]) -> None:
    from hf_fixtures import build_model

    model = build_model("llama", 50, layers=8)
    ids = torch.tensor([[3, 9, 4, 1, 7]])
    with LayerInputCapture(model, (2, 4, 5)) as capture, torch.no_grad():
        out = model(ids, output_hidden_states=True)
        rows = capture.take()
    assert rows is not None and rows.shape == (5, 3 * 64)
    # Hugging Face's hidden_states[i] is the input of layer i (index 0: the embeddings).
    expected = torch.cat([out.hidden_states[i][0] for i in (2, 4, 5)], dim=-1)
    assert torch.equal(rows, expected)
    assert capture.take() is None  # taken once


@pytest.fixture(scope="module")
def small_eagle(tiny_hf: dict[str, Any]) -> Any:
    """The 12-token target of the HF exactness tests with an echo head."""
    from hf_fixtures import build_model
    from test_hf_exactness import VOCAB

    from specbench.models.hf.model import HFLanguageModel
    from specbench.models.hf.tokenizer import HFTokenizer
    from specbench.plugins import MethodModels

    target = build_model("llama", VOCAB, seed=3, layers=4)
    with torch.no_grad():
        target.lm_head.weight.mul_(0.25)
    models = MethodModels(target=HFLanguageModel(target, HFTokenizer(tiny_hf["tokenizer"]), "t"))
    return models, target


@pytest.fixture(scope="module")
def echo_folder(small_eagle: Any, tmp_path_factory: pytest.TempPathFactory) -> Path:
    _, target = small_eagle
    return save_eagle3(echo_head(target, (1, 2, 3)), tmp_path_factory.mktemp("echo"))


def test_head_cache_equals_one_pass_over_the_committed_sequence(
    small_eagle: Any, echo_folder: Path
) -> None:
    models, target = small_eagle
    method = make_method("eagle3", models, head=str(echo_folder), k=3)
    result = method.generate(request([3, 7, 1], 20, 0, temperature=1.0))
    assert result.stats.accepted > 0 and result.stats.rejections > 0
    state = method.state
    sequence = [3, 7, 1, *result.tokens]
    committed = sequence[: state.pairs + 1]
    with torch.no_grad():
        out = target(torch.tensor([committed[:-1]]), output_hidden_states=True)
        features = torch.cat([out.hidden_states[i][0] for i in (1, 2, 3)], dim=-1)
        head = state.head
        embeds = target.get_input_embeddings()(torch.tensor(committed[1:]))
        from specbench.heads.eagle3 import KVCache

        fresh = KVCache()
        head(embeds, head.combine(features), torch.arange(len(committed) - 1), fresh)
    assert len(state.cache) == len(fresh) == state.pairs
    assert torch.allclose(state.cache.keys, fresh.keys, atol=1e-4)


@pytest.mark.parametrize("tree", [False, True])
def test_eagle3_greedy_equals_the_baseline_token_for_token(
    small_eagle: Any, echo_folder: Path, tree: bool
) -> None:
    models, _ = small_eagle
    baseline = make_method("baseline", models)
    eagle = make_method("eagle3", models, head=str(echo_folder), tree=tree, depth=3, budget=8)
    proposed = accepted = 0
    for prompt in ([3, 7, 1], [5, 5, 2, 9], [11, 0]):
        ours = eagle.generate(request(prompt, 24))
        assert ours.tokens == baseline.generate(request(prompt, 24)).tokens
        proposed += ours.stats.proposed
        accepted += ours.stats.accepted
    assert proposed > 0 and accepted > 0


def test_a_reduced_draft_vocabulary_maps_drafts_to_target_ids(pair: Any, tmp_path: Path) -> None:
    vocab = pair.target.model.config.vocab_size
    head = random_head(_config(64, vocab, vocab // 3, (0, 1, 1)))
    folder = save_eagle3(head, tmp_path / "reduced")
    baseline = make_method("baseline", pair)
    for tree in (False, True):
        eagle = make_method("eagle3", pair, head=str(folder), tree=tree)
        ours = eagle.generate(request([5, 9, 23, 7], 16))
        assert ours.tokens == baseline.generate(request([5, 9, 23, 7], 16)).tokens
        assert ours.stats.proposed > 0  # layer 1 read twice still gives features
    drafted = eagle.state.draft_to_target
    assert set(drafted.tolist()) <= set(range(0, vocab, 3))


@pytest.mark.parametrize("tree", [False, True])
def test_eagle3_sampling_matches_the_target(
    small_eagle: Any, echo_folder: Path, tree: bool
) -> None:
    from test_hf_exactness import LENGTH, PROMPT, _exact_joint, _pair_probs

    from specbench.decoding.sampling import SamplingParams

    models, target = small_eagle
    method = make_method("eagle3", models, head=str(echo_folder), tree=tree, k=3, depth=3)
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


def test_a_reused_prompt_cache_is_made_up_for(small_eagle: Any, echo_folder: Path) -> None:
    """The sampling audit reuses a prompt's cache: the target then skips the prompt, and
    the head reads the missing features once, the output unchanged."""
    models, _ = small_eagle
    eagle = make_method("eagle3", models, head=str(echo_folder))
    plain = eagle.generate(request([3, 7, 1, 4], 12, 5, temperature=1.0))
    models.target.reuse_prompt_cache = True
    try:
        eagle.generate(request([3, 7, 1, 4], 12, 5, temperature=1.0))  # stores the cache
        reused = eagle.generate(request([3, 7, 1, 4], 12, 5, temperature=1.0))
    finally:
        models.target.reuse_prompt_cache = False
    assert reused.tokens == plain.tokens
    assert reused.stats.extra.get("feature_recomputes") == 1.0


def test_heads_train_writes_a_speculators_head_that_runs_exactly(
    tiny_hf: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from typer.testing import CliRunner

    from specbench.cli.main import app
    from specbench.records import SampleRecord, read_records

    monkeypatch.setenv("SPECBENCH_CACHE", str(tmp_path / "cache"))
    preset = tmp_path / "eagle.toml"
    TRAINING = (
        "train_texts = 10\nanswer_tokens = 12\ntrain_steps = 20\n"
        "draft_vocab = 128\nintermediate_size = 32"
    )
    preset.write_text(
        f"""
name = "eagle-tiny"
[models.target]
backend = "hf"
model = "{tiny_hf["llama"]["target"]}"
dtype = "float32"
device = "cpu"
[[methods]]
name = "baseline"
[[methods]]
name = "eagle3"
[methods.params]
{TRAINING}
[[methods]]
name = "eagle3"
label = "eagle3-tree"
[methods.params]
tree = true
{TRAINING}
[prompts]
source = "inline"
prompts = ["def add(a, b):", "hello there"]
[sampling]
temperature = 0.0
max_new_tokens = 16
"""
    )
    runner = CliRunner()
    missing = runner.invoke(app, ["run", "-p", str(preset), "-o", str(tmp_path / "a.jsonl")])
    assert missing.exit_code != 0
    assert "specbench train -p" in " ".join(missing.output.split())
    trained = runner.invoke(app, ["heads", "train", "-p", str(preset)])
    assert trained.exit_code == 0, trained.output
    assert "holdout top-1 per draft step" in trained.output
    heads = [p for p in (tmp_path / "cache" / "heads").iterdir() if p.is_dir()]
    (folder,) = [p for p in heads if (p / "meta.json").is_file()]  # both rows share one head
    meta = json.loads((folder / "meta.json").read_text())
    assert meta["kind"] == "eagle3" and meta["train_texts"] == 9 and meta["holdout_texts"] == 1
    assert len(meta["holdout_top1"]) == 3
    raw = json.loads((folder / "config.json").read_text())
    assert raw["speculators_model_type"] == "eagle3" and raw["draft_vocab_size"] == 128
    listed = runner.invoke(app, ["heads", "list"])
    assert "eagle3" in listed.output and "draft vocab 128" in listed.output
    out = tmp_path / "run.jsonl"
    ran = runner.invoke(app, ["run", "-p", str(preset), "-o", str(out), "-q"])
    assert ran.exit_code == 0, ran.output
    rows = [
        r
        for r in read_records(out)
        if isinstance(r, SampleRecord) and r.method.startswith("eagle3")
    ]
    assert len(rows) == 4 and all(r.matches_baseline for r in rows)
    assert sum(r.proposed for r in rows) > 0
