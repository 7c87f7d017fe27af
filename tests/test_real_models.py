"""Real weights from the offline catalogue (nox -s slow). Fetches them once if needed."""

from __future__ import annotations

import pytest
import torch
from helpers import make_method, request

from specbench.models import catalog
from specbench.models.hf.loading import load_hf_model
from specbench.models.loading import check_models, load_models
from specbench.models.specs import HFModelSpec, ModelsSpec
from specbench.prompts.conversation import PromptEncoder
from specbench.prompts.sources import BuiltinPromptSet

pytestmark = pytest.mark.slow
pytest.importorskip("transformers")


def _fetched(name: str) -> str:
    entry = catalog.get_entry(name)
    if not entry.fetched:
        catalog.fetch(entry)
    return name


@pytest.fixture(scope="module")
def mt_bench_prompts() -> list[str]:
    return [p.text for p in BuiltinPromptSet(source="mt-bench", limit=2).load(None)]


def test_smollm2_baseline_equals_hf_generate(mt_bench_prompts: list[str]) -> None:
    name = _fetched("smollm2-135m")
    models = load_models(ModelsSpec(target=HFModelSpec(model=name, dtype="float32")))
    encoder = PromptEncoder(models.target.tokenizer)
    baseline = make_method("baseline", models)
    for text in mt_bench_prompts:
        ids = encoder.encode([], text)
        ours = baseline.generate(request(ids, 32)).tokens
        with torch.no_grad():
            theirs = models.target.model.generate(
                torch.tensor([ids]), max_new_tokens=32, do_sample=False
            )[0, len(ids) :].tolist()
        assert ours == theirs[: len(ours)]


def test_qwen_pair_greedy_speculative_is_identical(mt_bench_prompts: list[str]) -> None:
    target = HFModelSpec(
        model=_fetched("qwen2.5-coder-1.5b"), dtype="bfloat16", batch_invariant=True
    )
    draft = HFModelSpec(model=_fetched("qwen2.5-coder-0.5b"), dtype="bfloat16")
    models = load_models(ModelsSpec(target=target, draft=draft))
    encoder = PromptEncoder(models.target.tokenizer)
    baseline = make_method("baseline", models)
    speculative = make_method("speculative", models, k=3)
    accepted = verified = 0
    for text in mt_bench_prompts:
        ids = encoder.encode([], text)
        result = speculative.generate(request(ids, 32))
        assert result.tokens == baseline.generate(request(ids, 32)).tokens
        accepted += result.stats.accepted
        verified += sum(result.stats.position_verified)
    assert accepted / verified > 0.5


def test_catalogue_tokenizers_pair_up_and_mismatch_is_caught() -> None:
    qwen = ModelsSpec(
        target=HFModelSpec(model=_fetched("qwen2.5-coder-1.5b")),
        draft=HFModelSpec(model=_fetched("qwen2.5-coder-0.5b")),
    )
    assert check_models(qwen) == ([], [])
    mixed = ModelsSpec(
        target=HFModelSpec(model="qwen2.5-coder-1.5b"),
        draft=HFModelSpec(model=_fetched("smollm2-135m")),
    )
    issues, _ = check_models(mixed)
    assert "vocabulary entries differ" in issues[0][1]


def test_gguf_file_loads_like_its_conversion() -> None:
    entry = catalog.get_entry(_fetched("qwen2.5-coder-0.5b"))
    folder = str(entry.folder())
    gguf = load_hf_model(
        HFModelSpec(model=folder, gguf_file=entry.gguf_name, dtype="float32"), folder, "gguf"
    )
    converted = load_hf_model(
        HFModelSpec(model=entry.name, dtype="float32"), str(entry.hf_dir()), "converted"
    )
    ids = converted.tokenizer.encode("def fibonacci(n):")
    a = gguf.new_session().logits_from(ids, len(ids) - 1)
    b = converted.new_session().logits_from(ids, len(ids) - 1)
    assert torch.allclose(a, b, atol=1e-3)


def test_audit_passes_the_qwen_pair_greedy_and_sampled(tmp_path) -> None:
    """``specbench audit`` on the catalogue pair: greedy equality with the batch-invariant
    target, and a small sampling audit of speculative decoding (alpha 0.01, Bonferroni)."""
    from specbench.audit.run import AuditOptions, audit_preset
    from specbench.plugins import discover_methods
    from specbench.presets.schema import load_preset

    _fetched("qwen2.5-coder-1.5b")
    _fetched("qwen2.5-coder-0.5b")
    registry = discover_methods()
    greedy = load_preset(
        "qwen-coder-mtbench",
        registry,
        [("methods", [{"name": "baseline"}, {"name": "speculative", "params": {"k": 3}}])],
    )
    outcome = audit_preset(greedy, AuditOptions(prompts=2, tokens=24), tmp_path / "greedy.jsonl")
    assert [r.verdict for r in outcome.records] == ["pass"]
    sampled = load_preset(
        "qwen-coder-mtbench",
        registry,
        [
            ("methods", [{"name": "speculative", "params": {"k": 2}}]),
            ("sampling.temperature", 0.8),
            ("sampling.top_k", 20),
        ],
    )
    outcome = audit_preset(
        sampled, AuditOptions(samples=300, prompts=1, tokens=2), tmp_path / "sampled.jsonl"
    )
    assert [r.verdict for r in outcome.records] == ["pass"], outcome.records[0].detail
