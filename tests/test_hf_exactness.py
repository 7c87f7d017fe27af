"""Speculative sampling on a tiny Hugging Face model reproduces the target's distribution.

The target is a random 2-layer Llama with a 12-token vocabulary, small enough that the exact
joint distribution of the first four generated tokens comes from one batched forward over
every possible prefix. Generations run through the real HF sessions (KV cache, rollback),
and the chi-square tests on consecutive token pairs use ALPHA = 1e-3 with fixed seeds.
"""

from __future__ import annotations

import itertools
from collections import Counter

import pytest
import torch
from helpers import make_method, request
from stats_utils import chi_square_pvalue

from specbench.decoding.sampling import SamplingParams, logits_to_probs
from specbench.models.hf.model import HFLanguageModel
from specbench.models.hf.tokenizer import HFTokenizer
from specbench.plugins import MethodModels

pytest.importorskip("transformers")

ALPHA = 1e-3
VOCAB = 12
PROMPT = [3, 7, 1]
LENGTH = 4
SAMPLES = 2500


@pytest.fixture(scope="module")
def small_pair(tiny_hf: dict) -> tuple[MethodModels, torch.nn.Module]:
    from hf_fixtures import build_model, perturbed_copy

    target = build_model("llama", VOCAB, seed=3)
    with torch.no_grad():
        target.lm_head.weight.mul_(0.25)  # undo most of the sharpening: keep sampling diverse
    draft = perturbed_copy(target, scale=2.0, seed=4)  # alpha ~0.7: rejections are common
    tokenizer = HFTokenizer(tiny_hf["tokenizer"])
    models = MethodModels(
        target=HFLanguageModel(target, tokenizer, "target"),
        draft=HFLanguageModel(draft, tokenizer, "draft"),
    )
    return models, target


def _exact_joint(model: torch.nn.Module, sampling: SamplingParams) -> dict[tuple[int, ...], float]:
    """P(x1..x4) for every sequence, from one forward over all 12^3 prefixes."""
    prefixes = list(itertools.product(range(VOCAB), repeat=LENGTH - 1))
    ids = torch.tensor([PROMPT + list(p) for p in prefixes])
    with torch.no_grad():
        logits = model(ids).logits[:, len(PROMPT) - 1 :].double()
    probs = logits_to_probs(logits, sampling).double()  # [prefixes, 4 positions, V]
    joint = {}
    for row, prefix in enumerate(prefixes):
        p = probs[row]
        head = p[0, prefix[0]] * p[1, prefix[1]] * p[2, prefix[2]]
        for last in range(VOCAB):
            joint[(*prefix, last)] = float(head * p[3, last])
    return joint


def _pair_probs(joint: dict, first: int) -> dict[tuple[int, int], float]:
    out: Counter = Counter()
    for sequence, p in joint.items():
        out[sequence[first : first + 2]] += p
    return dict(out)


def _pvalues(models, target, temperature: float, top_p: float, method) -> list[float]:
    sampling = SamplingParams(temperature=temperature, top_p=top_p)
    joint = _exact_joint(target, sampling)
    counts = {0: Counter(), 2: Counter()}
    accepted = 0
    for seed in range(SAMPLES):
        result = method.generate(request(PROMPT, LENGTH, seed, temperature, None, top_p))
        accepted += result.stats.accepted
        for first in counts:
            counts[first][tuple(result.tokens[first : first + 2])] += 1
    assert accepted > SAMPLES // 2  # the draft is close: speculation happens
    return [chi_square_pvalue(counts[f], _pair_probs(joint, f)) for f in counts]


@pytest.mark.parametrize(("temperature", "top_p", "k"), [(1.0, 1.0, 3), (0.8, 0.9, 2)])
def test_hf_speculative_sampling_matches_target(small_pair, temperature, top_p, k) -> None:
    models, target = small_pair
    method = make_method("speculative", models, k=k)
    pvalues = _pvalues(models, target, temperature, top_p, method)
    assert min(pvalues) > ALPHA / len(pvalues), pvalues


def test_broken_verifier_fails_on_hf(small_pair) -> None:
    from test_exactness import ResampleFromTarget

    models, target = small_pair
    method = make_method("speculative", models, k=3)
    method.verifier = ResampleFromTarget()
    assert min(_pvalues(models, target, 1.0, 1.0, method)) < 1e-9
