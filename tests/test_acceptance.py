"""Measured acceptance agrees with the analytic alpha = 1 - TV(p, q) of the toy pair.

An order-0 toy pair uses the same p and q at every position, so every verified draft token
is accepted with probability alpha = sum_x min(p(x), q(x)) (after the sampling transforms),
independently. Checks are two-sided z-tests at ALPHA = 1e-3 (|z| < 3.29) with fixed seeds.
"""

from __future__ import annotations

import pytest
import torch
from helpers import make_method, request, toy_pair

from specbench.decoding.sampling import SamplingParams, logits_to_probs
from specbench.report.summary import generation_metrics

Z_CRITICAL = 3.29  # two-sided, ALPHA = 1e-3


def _analytic_alpha(models, sampling: SamplingParams) -> float:
    p = logits_to_probs(models.target.next_logits([]), sampling)
    q = logits_to_probs(models.draft.next_logits([]), sampling)
    return float(torch.minimum(p, q).sum())


@pytest.mark.parametrize(
    ("temperature", "top_p", "k"), [(1.0, 1.0, 4), (0.7, 0.9, 2), (1.3, 1.0, 8)]
)
def test_acceptance_rate_matches_one_minus_tv(temperature: float, top_p: float, k: int) -> None:
    models = toy_pair(vocab_size=16, order=0, seed=3, distance=0.9, sharpness=1.0)
    sampling = SamplingParams(temperature=temperature, top_p=top_p)
    alpha = _analytic_alpha(models, sampling)
    assert 0.3 < alpha < 0.95  # the pair is neither trivial nor hopeless
    method = make_method("speculative", models, k=k)

    accepted = verified = 0
    per_position_accepted = [0] * k
    per_position_verified = [0] * k
    steps = 0
    expected = 0.0
    for seed in range(60):
        result = method.generate(request([2, 3], 120, seed, temperature, None, top_p))
        stats = result.stats
        accepted += stats.accepted
        verified += sum(stats.position_verified)
        expected += stats.expected_accepted
        steps += stats.steps
        for i, (a, v) in enumerate(
            zip(stats.position_accepted, stats.position_verified, strict=True)
        ):
            per_position_accepted[i] += a
            per_position_verified[i] += v

    def z(successes: int, trials: int) -> float:
        return (successes / trials - alpha) / (alpha * (1 - alpha) / trials) ** 0.5

    assert abs(z(accepted, verified)) < Z_CRITICAL
    # Per position, conditional on reaching it, acceptance is alpha as well.
    for a, v in zip(per_position_accepted, per_position_verified, strict=True):
        if v >= 200:
            assert abs(z(a, v)) < Z_CRITICAL
    # The verifier's own expectation is exactly alpha at every verified position.
    assert expected / verified == pytest.approx(alpha, rel=1e-5)


def test_metrics_follow_the_documented_conventions() -> None:
    models = toy_pair(vocab_size=16, order=0, seed=3, distance=0.9, sharpness=1.0)
    method = make_method("speculative", models, k=4)
    result = method.generate(request([2, 3], 64, 0, temperature=1.0))
    metrics = generation_metrics(result, wall_s=0.5)
    stats = result.stats
    assert metrics["new_tokens"] == 64
    assert metrics["tokens_per_sec"] == pytest.approx(128.0)
    # Every step yields its accepted drafts plus one target token (bonus or correction).
    assert stats.accepted + stats.steps == 64
    assert metrics["avg_tokens_per_step"] == pytest.approx(64 / stats.target_calls)
    assert metrics["accepted_per_step"] == pytest.approx(stats.accepted / stats.steps)
    assert metrics["acceptance_rate"] == pytest.approx(
        stats.accepted / sum(stats.position_verified)
    )
    assert metrics["proposal_acceptance"] == pytest.approx(stats.accepted / stats.proposed)
    assert metrics["target_calls_per_token"] == pytest.approx(stats.target_calls / 64)
    assert stats.draft_calls == stats.proposed  # one draft forward per drafted token


def test_baseline_metrics() -> None:
    models = toy_pair()
    result = make_method("baseline", models).generate(request([2], 20, 0, temperature=1.0))
    metrics = generation_metrics(result, wall_s=1.0)
    assert metrics["avg_tokens_per_step"] == 1.0
    assert metrics["target_calls"] == 20
    assert metrics["acceptance_rate"] is None
    assert metrics["proposed"] == 0
