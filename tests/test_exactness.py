"""Speculative sampling reproduces the target's distribution.

Two layers, both at significance level ALPHA = 1e-3 per test with fixed seeds:

* the verifier alone, vectorised over 200 000 rows of fixed (p, q): the token emitted at
  each position follows the target row of that position;
* the whole method on an order-1 toy Markov chain: the joint distribution of three
  consecutive generated tokens at several positions equals the exact one computed from the
  chain, for several temperatures, top-k, top-p < 1 and k in {1, 4, 8}.

Both are shown to fail for a verifier with the classic bug of resampling from p instead of
norm(max(0, p - q)) after a rejection.
"""

from __future__ import annotations

import itertools
from collections import Counter

import pytest
import torch
from helpers import make_method, request, toy_pair
from stats_utils import chi_square_pvalue

from specbench.decoding.core import decode
from specbench.decoding.drafters import ModelDrafter
from specbench.decoding.sampling import SamplingParams, logits_to_probs, sample
from specbench.decoding.verify import RejectionVerifier, Verdict
from specbench.models.toy import ToyLanguageModel

ALPHA = 1e-3


class ResampleFromTarget(RejectionVerifier):
    """A deliberately broken verifier: after a rejection it draws from p, not the residual."""

    def verify(
        self,
        draft_tokens: torch.Tensor,
        draft_probs: torch.Tensor,
        target_probs: torch.Tensor,
        generator: torch.Generator | None,
        features=None,
    ) -> Verdict:
        verdict = super().verify(draft_tokens, draft_probs, target_probs, generator)
        rows = torch.arange(draft_tokens.shape[0])
        from_target = sample(target_probs[rows, verdict.accepted], generator)
        rejected = verdict.accepted < draft_tokens.shape[1]
        verdict.next_tokens = torch.where(rejected, from_target, verdict.next_tokens)
        return verdict


# ----------------------------------------------------------------------------- verifier alone


def _emitted_tokens(
    verifier: RejectionVerifier, p: torch.Tensor, q: torch.Tensor, n: int, seed: int
):
    """Run the verifier on ``n`` rows of drafts drawn from fixed per-position ``q``."""
    generator = torch.Generator().manual_seed(seed)
    k = q.shape[0]
    drafts = torch.stack(
        [torch.multinomial(q[i], n, replacement=True, generator=generator) for i in range(k)], 1
    )
    verdict = verifier.verify(drafts, q.expand(n, k, -1), p.expand(n, k + 1, -1), generator)
    return drafts, verdict


def _position_pvalues(p, drafts, verdict) -> list[float]:
    """p-value, per position j, that the token emitted at j follows p[j]."""
    k = drafts.shape[1]
    pvalues = []
    for j in range(k + 1):
        reached = verdict.accepted >= j
        accepted_here = verdict.accepted > j
        tokens = torch.where(accepted_here, drafts[:, min(j, k - 1)], verdict.next_tokens)[reached]
        counts = Counter(tokens.tolist())
        pvalues.append(chi_square_pvalue(counts, dict(enumerate(p[j].tolist()))))
    return pvalues


def _random_rows(rows: int, vocab: int, generator: torch.Generator, sparsity: float = 0.0):
    logits = 1.5 * torch.randn(rows, vocab, generator=generator)
    if sparsity:
        mask = torch.rand(rows, vocab, generator=generator) < sparsity
        mask[:, 0] = False
        logits = logits.masked_fill(mask, float("-inf"))
    return torch.softmax(logits, -1)


@pytest.mark.parametrize("k", [1, 4, 8])
@pytest.mark.parametrize("case", ["random", "sparse", "one-hot-q", "equal", "disjoint"])
def test_verifier_emits_target_distribution(k: int, case: str) -> None:
    vocab, n = 8, 200_000
    g = torch.Generator().manual_seed(100 + k)
    p = _random_rows(k + 1, vocab, g, sparsity=0.4 if case == "sparse" else 0.0)
    if case == "equal":
        q = p[:k].clone()
    elif case == "one-hot-q":
        q = torch.nn.functional.one_hot(torch.randint(vocab, (k,), generator=g), vocab).float()
    elif case == "disjoint":
        p = torch.zeros(k + 1, vocab)
        p[:, :4] = _random_rows(k + 1, 4, g)
        q = torch.zeros(k, vocab)
        q[:, 4:] = _random_rows(k, 4, g)
    else:
        q = _random_rows(k, vocab, g, sparsity=0.4 if case == "sparse" else 0.0)
    drafts, verdict = _emitted_tokens(RejectionVerifier(), p, q, n, seed=k)
    pvalues = _position_pvalues(p, drafts, verdict)
    assert min(pvalues) > ALPHA / len(pvalues), pvalues
    if case == "equal":
        assert bool((verdict.accepted == k).all())
    if case == "disjoint":
        assert bool((verdict.accepted == 0).all())


def test_verifier_acceptance_probability_is_one_minus_tv() -> None:
    vocab, n = 8, 200_000
    g = torch.Generator().manual_seed(5)
    p = _random_rows(2, vocab, g)
    q = _random_rows(1, vocab, g)
    _, verdict = _emitted_tokens(RejectionVerifier(), p, q, n, seed=6)
    alpha = float(torch.minimum(p[0], q[0]).sum())
    measured = float((verdict.accepted == 1).float().mean())
    sigma = (alpha * (1 - alpha) / n) ** 0.5
    assert abs(measured - alpha) < 3.29 * sigma  # two-sided, ALPHA = 1e-3
    assert torch.allclose(verdict.expected_accept[:, 0], torch.tensor(alpha), atol=1e-6)


def test_broken_verifier_fails_single_step_check() -> None:
    vocab, n, k = 8, 200_000, 4
    g = torch.Generator().manual_seed(104)
    p = _random_rows(k + 1, vocab, g)
    q = _random_rows(k, vocab, g)
    drafts, verdict = _emitted_tokens(ResampleFromTarget(), p, q, n, seed=k)
    assert min(_position_pvalues(p, drafts, verdict)) < 1e-9


# ----------------------------------------------------------------------------- whole method

CONFIGS = [
    # (temperature, top_k, top_p, k)
    (1.0, None, 1.0, 1),
    (1.0, None, 1.0, 4),
    (1.0, None, 1.0, 8),
    (0.6, None, 0.8, 4),
    (1.5, None, 0.9, 8),
    (0.8, 3, 1.0, 4),
    (0.7, 4, 0.9, 1),
]
SAMPLES = 6000
LENGTH = 10
POSITIONS = (0, 4, 7)  # first token of each triple checked
PROMPT = [2]


def _transition_matrix(model: ToyLanguageModel, sampling: SamplingParams) -> torch.Tensor:
    """P[a, b]: probability of b after a, after the sampling transforms (order-1 chain)."""
    rows = [logits_to_probs(model.next_logits([a]), sampling) for a in range(model.vocab_size)]
    return torch.stack(rows).double()


def _exact_triples(model: ToyLanguageModel, sampling: SamplingParams) -> dict[int, dict]:
    transition = _transition_matrix(model, sampling)
    marginal = transition[PROMPT[-1]]
    exact = {}
    for t in range(LENGTH - 2):
        if t in POSITIONS:
            exact[t] = {
                (a, b, c): float(marginal[a] * transition[a, b] * transition[b, c])
                for a, b, c in itertools.product(range(model.vocab_size), repeat=3)
            }
        marginal = marginal @ transition
    return exact


def _triple_pvalues(generate, models, sampling: SamplingParams) -> list[float]:
    counts: dict[int, Counter] = {t: Counter() for t in POSITIONS}
    for seed in range(SAMPLES):
        tokens = generate(seed)
        assert len(tokens) == LENGTH
        for t in POSITIONS:
            counts[t][tuple(tokens[t : t + 3])] += 1
    exact = _exact_triples(models.target, sampling)
    return [chi_square_pvalue(counts[t], exact[t]) for t in POSITIONS]


@pytest.mark.parametrize(("temperature", "top_k", "top_p", "k"), CONFIGS)
def test_speculative_sampling_matches_target(temperature, top_k, top_p, k) -> None:
    models = toy_pair(vocab_size=6, order=1, seed=11, distance=1.2)
    method = make_method("speculative", models, k=k)
    sampling = SamplingParams(temperature=temperature, top_k=top_k, top_p=top_p)

    def generate(seed: int) -> list[int]:
        req = request(PROMPT, LENGTH, seed, temperature, top_k, top_p)
        return method.generate(req).tokens

    pvalues = _triple_pvalues(generate, models, sampling)
    assert min(pvalues) > ALPHA / len(pvalues), pvalues


def test_baseline_sampling_matches_target() -> None:
    models = toy_pair(vocab_size=6, order=1, seed=11)
    method = make_method("baseline", models)
    sampling = SamplingParams(temperature=0.9, top_p=0.9)

    def generate(seed: int) -> list[int]:
        return method.generate(request(PROMPT, LENGTH, seed, 0.9, None, 0.9)).tokens

    pvalues = _triple_pvalues(generate, models, sampling)
    assert min(pvalues) > ALPHA / len(pvalues), pvalues


def test_broken_verifier_fails_whole_method_check() -> None:
    models = toy_pair(vocab_size=6, order=1, seed=11, distance=1.2)
    drafter = ModelDrafter(models.require_draft(), k=4)
    sampling = SamplingParams(temperature=1.0)

    def generate(seed: int) -> list[int]:
        req = request(PROMPT, LENGTH, seed, temperature=1.0)
        return decode([req], models.target, drafter, ResampleFromTarget())[0].tokens

    assert min(_triple_pvalues(generate, models, sampling)) < 1e-6
