"""Prompt lookup: n-gram drafting, exact under sampling, greedy-equal to the baseline."""

from __future__ import annotations

from collections import Counter

import pytest
from helpers import make_method, request, toy_pair
from stats_utils import chi_square_pvalue
from test_exactness import LENGTH, POSITIONS, PROMPT, SAMPLES, _exact_triples

from specbench.decoding.drafters import lookup_continuation
from specbench.decoding.sampling import SamplingParams

ALPHA = 1e-3


@pytest.mark.parametrize(
    ("sequence", "limit", "expected"),
    [
        ([1, 2, 3, 4, 5, 1, 2, 3], 3, [4, 5, 1]),  # trigram match
        ([1, 2, 3, 9, 1, 2], 4, [3, 9, 1, 2]),  # bigram match, continuation runs into the tail
        ([7, 1, 2, 8, 1, 2], 2, [8, 1]),  # latest match wins over an earlier one
        ([5, 6, 7], 4, []),  # nothing repeats
        ([4, 4], 3, [4]),  # unigram
    ],
)
def test_lookup_continuation(sequence: list[int], limit: int, expected: list[int]) -> None:
    assert lookup_continuation(sequence, limit, max_ngram=3, min_ngram=1) == expected


def test_lookup_prefers_the_longest_ngram() -> None:
    # The unigram "3" last occurred before 9; the bigram "2 3" before 4.
    assert lookup_continuation([2, 3, 4, 0, 3, 9, 2, 3], 1, 3, 1) == [4]


@pytest.mark.parametrize(("temperature", "top_p", "k"), [(1.0, 1.0, 3), (0.7, 0.9, 6)])
def test_prompt_lookup_sampling_matches_target(temperature: float, top_p: float, k: int) -> None:
    models = toy_pair(vocab_size=6, order=1, seed=11)
    method = make_method("prompt-lookup", models, k=k, max_ngram=2, min_ngram=1)
    counts: dict[int, Counter] = {t: Counter() for t in POSITIONS}
    proposed = 0
    for seed in range(SAMPLES):
        result = method.generate(request(PROMPT * 3, LENGTH, seed, temperature, None, top_p))
        proposed += result.stats.proposed
        for t in POSITIONS:
            counts[t][tuple(result.tokens[t : t + 3])] += 1
    assert proposed > SAMPLES  # lookups really proposed tokens
    sampling = SamplingParams(temperature=temperature, top_p=top_p)
    exact = _exact_triples(models.target, sampling)
    pvalues = [chi_square_pvalue(counts[t], exact[t]) for t in POSITIONS]
    assert min(pvalues) > ALPHA / len(pvalues), pvalues


def test_prompt_lookup_greedy_equals_baseline_on_toy() -> None:
    models = toy_pair(vocab_size=16, order=1, seed=4)
    baseline = make_method("baseline", models)
    lookup = make_method("prompt-lookup", models, k=5)
    hits = 0
    for prompt in ([2, 3, 4, 2, 3, 4, 2], [5], list(range(2, 16)) * 2):
        result = lookup.generate(request(prompt, 60))
        assert result.tokens == baseline.generate(request(prompt, 60)).tokens
        hits += result.stats.accepted
    assert hits > 0


def test_prompt_lookup_greedy_equals_baseline_on_hf(tiny_hf: dict) -> None:
    from specbench.models.loading import load_models
    from specbench.models.specs import HFModelSpec, ModelsSpec

    models = load_models(
        ModelsSpec(
            target=HFModelSpec(model=str(tiny_hf["qwen2"]["target"]), dtype="float32", device="cpu")
        )
    )
    baseline = make_method("baseline", models)
    lookup = make_method("prompt-lookup", models, k=6)
    text = "def add(a, b):\n    return a + b\n\ndef add(a, b):"
    prompt = tiny_hf["tokenizer"].encode(text)
    result = lookup.generate(request(prompt, 40))
    assert result.tokens == baseline.generate(request(prompt, 40)).tokens
    assert "lookup_hit_rate" in result.stats.extra
