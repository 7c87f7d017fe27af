"""The static-cache engine gives the eager path's tokens exactly (CPU); CUDA graphs on GPUs."""

from __future__ import annotations

import shutil

import pytest
import torch
from helpers import hf_pair, make_method, request

from specbench.models.hf.static import StaticDecoder
from specbench.models.loading import load_models
from specbench.models.specs import DummyModelSpec, ModelsSpec


def test_static_decoder_rolls_back_like_a_dynamic_cache(tiny_hf: dict) -> None:
    models = hf_pair(tiny_hf)
    reference = tiny_hf["llama"]["target_model"]
    decoder = StaticDecoder(models.target, max_len=64)
    decoder.forward(torch.tensor([5, 6, 7, 8]))
    decoder.forward(torch.tensor([9, 10]))
    decoder.rollback(5)  # drop token 10
    logits = decoder.forward(torch.tensor([30, 31]))
    with torch.no_grad():
        expected = reference(torch.tensor([[5, 6, 7, 8, 9, 30, 31]])).logits[0, -2:]
    assert torch.allclose(logits, expected, atol=1e-4)
    decoder.reset()
    again = decoder.forward(torch.tensor([5, 6]))
    with torch.no_grad():
        assert torch.allclose(again, reference(torch.tensor([[5, 6]])).logits[0], atol=1e-4)
    with pytest.raises(ValueError, match="static_max_len"):
        decoder.forward(torch.arange(70))


def test_without_graphs_a_sequence_takes_the_smallest_cache_it_fits(tiny_hf: dict) -> None:
    """Attention reads every slot of a static cache, so a CPU step in a 4096-slot cache paid
    for 4096 positions whatever the context; each sequence now gets a cache its size."""
    models = hf_pair(tiny_hf)
    reference = tiny_hf["llama"]["target_model"]
    decoder = StaticDecoder(models.target, max_len=1024)
    decoder.reserve(100)
    assert decoder.cache_len == 128
    decoder.reserve(129)
    assert decoder.cache_len == 256
    decoder.forward(torch.tensor([5, 6, 7]))
    logits = decoder.forward(torch.tensor([8]))
    with torch.no_grad():
        expected = reference(torch.tensor([[5, 6, 7, 8]])).logits[0, -1:]
    assert torch.allclose(logits, expected, atol=1e-4)
    decoder.reserve(5000)  # past max_len: the largest, and forward says to raise it
    assert decoder.cache_len == 1024
    decoder.use_graphs = True  # graphs replay fixed buffers: always the full cache
    decoder.reserve(100)
    assert decoder.cache_len == 1024


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
@pytest.mark.parametrize(("temperature", "k"), [(0.0, 4), (0.0, 1), (0.9, 3)])
def test_static_engine_matches_eager_token_for_token(
    tiny_hf: dict, arch: str, temperature: float, k: int
) -> None:
    """Same logits, same random streams in the same order: same tokens, greedy or sampled."""
    models = hf_pair(tiny_hf, arch)
    tokenizer = tiny_hf["tokenizer"]
    eager = make_method("speculative", models, k=k)
    static = make_method("speculative", models, k=k, engine="static", static_max_len=256)
    base_eager = make_method("baseline", models)
    base_static = make_method("baseline", models, engine="static", static_max_len=256)
    for seed, text in enumerate(("the quick brown", "def add(a, b):", "question: what")):
        prompt = tokenizer.encode(text)
        req = request(prompt, 40, seed, temperature)
        expected = eager.generate(req)
        got = static.generate(req)  # the same decoder is reused across prompts
        assert got.tokens == expected.tokens
        assert got.stats.accepted == expected.stats.accepted
        assert base_static.generate(req).tokens == base_eager.generate(req).tokens


def test_static_engine_with_synthetic_acceptance_on_a_dummy_pair() -> None:
    models = load_models(
        ModelsSpec(
            target=DummyModelSpec(architecture="tiny-llama", dtype="float32", device="cpu"),
            draft=DummyModelSpec(
                architecture="tiny-llama-draft", dtype="float32", device="cpu", seed=1
            ),
        )
    )
    method = make_method(
        "speculative", models, k=4, engine="static", static_max_len=128, synthetic_acceptance=0.75
    )
    assert method.synthetic
    result = method.generate(request(models.target.tokenizer.encode("hello"), 60, 0))
    alpha = result.stats.accepted / sum(result.stats.position_verified)
    assert len(result.tokens) == 60 and 0.5 < alpha < 0.95


def test_static_engine_refuses_toy_models() -> None:
    from helpers import toy_pair

    from specbench.errors import PluginError

    method = make_method("baseline", toy_pair(), engine="static")
    with pytest.raises(PluginError, match="engine 'static' needs"):
        method.generate(request([2, 3], 5))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("compile", [False, True])
def test_cuda_graph_steps_match_eager_on_gpu(compile: bool) -> None:
    models = load_models(
        ModelsSpec(
            target=DummyModelSpec(architecture="tiny-llama", dtype="float32", device="cuda"),
            draft=DummyModelSpec(
                architecture="tiny-llama-draft", dtype="float32", device="cuda", seed=1
            ),
        )
    )
    eager = make_method("speculative", models, k=3)
    graphs = make_method(
        "speculative", models, k=3, engine="static", static_max_len=256, compile=compile
    )
    baseline = make_method("baseline", models)
    fast_baseline = make_method(
        "baseline", models, engine="static", static_max_len=256, compile=compile
    )
    for seed in range(3):
        req = request(models.target.tokenizer.encode(f"prompt {seed}"), 50, seed)
        assert graphs.generate(req).tokens == eager.generate(req).tokens
        assert fast_baseline.generate(req).tokens == baseline.generate(req).tokens


@pytest.mark.skipif(
    not (shutil.which("c++") or shutil.which("g++")),
    reason="torch.compile on a CPU needs a C++ compiler",
)
def test_compiled_steps_give_the_eager_tokens(tiny_hf: dict) -> None:
    """torch.compile fuses kernels but must not change the tokens (greedy, so ties aside)."""
    models = hf_pair(tiny_hf)
    tokenizer = tiny_hf["tokenizer"]
    eager = make_method("speculative", models, k=3)
    compiled = make_method(
        "speculative", models, k=3, engine="static", static_max_len=128, compile=True
    )
    for seed, text in enumerate(("the quick brown", "def add(a, b):")):
        req = request(tokenizer.encode(text), 30, seed)
        assert compiled.generate(req).tokens == eager.generate(req).tokens


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_the_lean_forward_gives_the_eager_logits_bit_for_bit(
    tiny_hf: dict, arch: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On a CPU the static engine runs supported models through the lean forward (fused
    packed projections, attention over live slots): in bfloat16 with batch_invariant its
    logits must equal the eager session's bit for bit, for a prompt, one-token steps, a
    4-row verification after a rollback, and a token tree."""
    from specbench.models.hf import lean
    from specbench.models.hf.loading import load_hf_model
    from specbench.models.specs import HFModelSpec

    folder = tiny_hf[arch]["target"]
    spec = HFModelSpec(model=str(folder), dtype="bfloat16", device="cpu", batch_invariant=True)
    model = load_hf_model(spec, str(folder), "t")
    calls = []
    original = lean.LeanForward.__call__

    def counted(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        calls.append(args[0].numel())
        return original(self, *args, **kwargs)

    monkeypatch.setattr(lean.LeanForward, "__call__", counted)
    static = model.new_static_session(128, max_len=256)
    eager = model.new_session()
    tokens = tiny_hf["tokenizer"].encode("the quick brown fox jumps over the lazy dog, def add")
    with torch.inference_mode():
        for session_calls in (
            lambda s: s.logits_from(tokens[:10], 5),
            lambda s: s.logits_from(tokens[:11], 10),
            lambda s: s.logits_from(tokens[:12], 11),
            lambda s: s.logits_from(tokens[:9] + tokens[12:16], 8),  # roll back, 4 new rows
            lambda s: s.tree_forward(tokens[:13], [-1, -1, 0, 2], [7, 8, 9, 10]),
        ):
            got, expected = session_calls(static), session_calls(eager)
            assert torch.equal(got, expected)
    assert calls and max(calls) >= 4  # the lean forward ran, prompts and trees included
    static.close()
