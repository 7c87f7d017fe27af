"""The Hugging Face backend on tiny random Llama and Qwen2 models built in the test."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from helpers import hf_pair, make_method, request

from specbench.errors import ModelLoadError
from specbench.models.hf.loading import load_hf_model
from specbench.models.hf.model import HFLanguageModel
from specbench.models.loading import load_models
from specbench.models.specs import HFModelSpec, ModelsSpec
from specbench.plugins import MethodModels

pytest.importorskip("transformers")

ARCHS = ["llama", "qwen2"]


def _spec(folder: Path, **extra) -> HFModelSpec:
    return HFModelSpec(model=str(folder), dtype="float32", device="cpu", **extra)


def _pair(tiny_hf: dict, arch: str, **draft_extra) -> MethodModels:
    return hf_pair(tiny_hf, arch, **draft_extra)


def _prompts(tiny_hf: dict) -> list[list[int]]:
    tokenizer = tiny_hf["tokenizer"]
    texts = ["the quick brown", "def add(a, b):", "question: what is", "speculative decoding"]
    return [tokenizer.encode(t) for t in texts]


@pytest.mark.parametrize("arch", ARCHS)
def test_session_logits_equal_a_full_forward_after_rollback(tiny_hf: dict, arch: str) -> None:
    model = load_hf_model(_spec(tiny_hf[arch]["target"]), str(tiny_hf[arch]["target"]), "t")
    reference = tiny_hf[arch]["target_model"]
    session = model.new_session()
    first = [5, 9, 14, 20, 33, 41, 7]
    session.logits_from(first, 3)
    # Diverge after 4 tokens: the cache must drop the stale positions, not reuse them.
    second = [5, 9, 14, 20, 50, 51, 52, 53]
    rows = session.logits_from(second, 4)
    with torch.no_grad():
        full = reference(torch.tensor([second])).logits[0, 4:].float()
    assert torch.allclose(rows, full, atol=1e-4)
    assert session.cache.get_seq_length() == len(second)


@pytest.mark.parametrize("arch", ARCHS)
def test_baseline_greedy_equals_hf_generate(tiny_hf: dict, arch: str) -> None:
    models = _pair(tiny_hf, arch)
    baseline = make_method("baseline", models)
    reference = tiny_hf[arch]["target_model"]
    for prompt in _prompts(tiny_hf):
        ours = baseline.generate(request(prompt, 24)).tokens
        with torch.no_grad():
            theirs = reference.generate(
                torch.tensor([prompt]),
                max_new_tokens=24,
                do_sample=False,
                eos_token_id=None,
                pad_token_id=0,
                min_new_tokens=24,
            )[0, len(prompt) :].tolist()
        assert ours == theirs


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("k", [1, 3, 6])
def test_greedy_speculative_equals_baseline(tiny_hf: dict, arch: str, k: int) -> None:
    models = _pair(tiny_hf, arch)
    baseline = make_method("baseline", models)
    speculative = make_method("speculative", models, k=k)
    accepted = 0
    for prompt in _prompts(tiny_hf):
        expected = baseline.generate(request(prompt, 40))
        got = speculative.generate(request(prompt, 40))
        assert got.tokens == expected.tokens
        accepted += got.stats.accepted
    assert accepted > 0  # the draft is close enough that speculation really happened


@pytest.mark.parametrize("method", ["baseline", "speculative"])
def test_no_step_reencodes_the_prefix(tiny_hf: dict, method: str) -> None:
    models = _pair(tiny_hf, "llama")
    decoder = make_method(method, models, **({"k": 4} if method == "speculative" else {}))
    prompt = _prompts(tiny_hf)[1] * 3
    result = decoder.generate(request(prompt, 30, temperature=1.0))
    total = len(prompt) + len(result.tokens)
    assert models.target.counters.tokens_processed <= total + result.stats.proposed
    if models.draft is not None and method == "speculative":
        draft_seen = models.draft.counters.tokens_processed
        assert draft_seen <= total + result.stats.proposed + result.stats.steps


def test_padded_draft_vocabulary_is_masked_not_rejected(tiny_hf: dict, tmp_path: Path) -> None:
    from hf_fixtures import perturbed_copy, save

    tokenizer = tiny_hf["tokenizer"]
    target = tiny_hf["llama"]["target_model"]
    draft = perturbed_copy(target, scale=0.3)
    draft.resize_token_embeddings(len(tokenizer) + 36)  # padded rows, as real drafts have
    folder = save(draft, tokenizer, tmp_path / "padded-draft")
    models = load_models(ModelsSpec(target=_spec(tiny_hf["llama"]["target"]), draft=_spec(folder)))
    assert models.target.vocab_size == models.draft.vocab_size == len(tokenizer)
    baseline = make_method("baseline", models)
    speculative = make_method("speculative", models, k=4)
    prompt = _prompts(tiny_hf)[0]
    assert (
        speculative.generate(request(prompt, 30)).tokens
        == baseline.generate(request(prompt, 30)).tokens
    )


def test_chat_template_and_eos_come_from_the_tokenizer(tiny_hf: dict) -> None:
    model = load_hf_model(_spec(tiny_hf["qwen2"]["target"]), str(tiny_hf["qwen2"]["target"]), "t")
    ids = model.tokenizer.chat_ids([{"role": "user", "content": "hi"}])
    text = tiny_hf["tokenizer"].decode(ids)
    assert text.startswith("<|im_start|>user\nhi<|im_end|>") and text.endswith("assistant\n")
    assert tiny_hf["tokenizer"].convert_tokens_to_ids("<|im_end|>") in model.tokenizer.eos_token_ids


def test_missing_folder_and_unreachable_hub_give_one_line_errors(tmp_path: Path) -> None:
    from specbench.models.catalog import resolve_model_source

    with pytest.raises(ModelLoadError, match="not a local folder, a catalogue name or a hub id"):
        resolve_model_source("./no/such/folder")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(
        ModelLoadError, match="check that the folder holds a transformers checkpoint"
    ):
        load_hf_model(_spec(empty), str(empty), "x")


def test_describe_reports_backend_details(tiny_hf: dict) -> None:
    model = load_hf_model(_spec(tiny_hf["llama"]["target"]), str(tiny_hf["llama"]["target"]), "t")
    described = model.describe()
    assert described["backend"] == "hf" and described["dtype"] == "float32"
    assert described["architecture"] == "LlamaForCausalLM" and described["parameters"] > 0
    assert isinstance(model, HFLanguageModel)


def test_reused_prompt_cache_gives_the_same_logits_without_reprocessing(tiny_hf: dict) -> None:
    """The audit's prompt-cache reuse: a fresh session adopts the stored prompt cache and
    processes only what follows it; its logits equal a session that processed everything."""
    model = hf_pair(tiny_hf).target
    prompt = list(range(5, 25))
    plain = model.new_session().logits_from(prompt + [7, 8], len(prompt) - 1)
    model.reuse_prompt_cache = True
    first = model.new_session().logits_from(prompt + [7, 8], len(prompt) - 1)  # stores it
    before = model.counters.tokens_processed
    again = model.new_session().logits_from(prompt + [9], len(prompt) - 1)
    assert model.counters.tokens_processed - before == 2  # the last prompt token and 9
    assert torch.allclose(first, plain, atol=1e-5)
    check = model.new_session()
    model.reuse_prompt_cache = False
    assert torch.allclose(again, check.logits_from(prompt + [9], len(prompt) - 1), atol=1e-5)


def test_batch_invariant_sessions_recompute_an_accepted_tree_path(tiny_hf: dict) -> None:
    """A tree row attends to its ancestors between masked siblings, which a blocked GEMM
    rounds unlike a contiguous prefix; batch-invariant sessions therefore drop the tree's
    cache on commit and process the accepted path again, so the cache equals one built token
    by token."""
    from specbench.models.loading import load_models
    from specbench.models.specs import HFModelSpec, ModelsSpec

    folder = tiny_hf["qwen2"]["target"]
    spec = HFModelSpec(model=str(folder), dtype="bfloat16", device="cpu", batch_invariant=True)
    model = load_models(ModelsSpec(target=spec)).target
    prompt = list(range(5, 40))
    session = model.new_session()
    session.logits_from(prompt, len(prompt) - 1)
    session.tree_forward(prompt, [-1, 0, -1], [7, 9, 11])
    session.commit_tree_path([0, 1])
    assert session.cached == prompt and session.tree == []
    before = model.counters.tokens_processed
    got = session.logits_from(prompt + [7, 9, 13], len(prompt) + 1)
    assert model.counters.tokens_processed - before == 3  # the path again, then the next token
    reference = model.new_session().logits_from(prompt + [7, 9, 13], len(prompt) + 1)
    assert torch.equal(got, reference)
    plain = hf_pair(tiny_hf, "qwen2").target  # not batch-invariant: keeps the tree's cache
    kept = plain.new_session()
    kept.tree_forward(prompt, [-1, 0], [7, 9])
    kept.commit_tree_path([0, 1])
    assert kept.cached == prompt + [7, 9]
