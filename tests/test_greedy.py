"""Greedy speculative decoding equals greedy decoding token for token."""

from __future__ import annotations

import pytest
from helpers import make_method, request, toy_pair

from specbench.models.toy import EOS_ID


@pytest.mark.parametrize("k", [1, 3, 4, 8, 16])
@pytest.mark.parametrize("distance", [0.0, 0.5, 2.0, 8.0])
def test_greedy_speculative_equals_baseline(k: int, distance: float) -> None:
    models = toy_pair(vocab_size=32, order=2, seed=5, distance=distance)
    baseline = make_method("baseline", models)
    speculative = make_method("speculative", models, k=k)
    for seed, prompt in enumerate([[2], [3, 4, 5], [7, 7, 7, 7], list(range(2, 30))]):
        expected = baseline.generate(request(prompt, 80, seed)).tokens
        got = speculative.generate(request(prompt, 80, seed + 100)).tokens
        assert got == expected


def test_greedy_with_perfect_draft_accepts_everything() -> None:
    models = toy_pair(vocab_size=32, order=2, seed=5, distance=0.0)
    result = make_method("speculative", models, k=4).generate(request([2, 3], 41, 0))
    assert result.stats.rejections == 0
    assert result.stats.steps == 9  # 8 steps of 4 drafts + 1 bonus, then one plain step
    assert len(result.tokens) == 41


def test_greedy_stops_at_eos_like_baseline() -> None:
    models = toy_pair(vocab_size=32, order=1, seed=9, distance=1.0, eos_bias=2.5)
    baseline = make_method("baseline", models)
    speculative = make_method("speculative", models, k=6)
    stopped = 0
    for start in range(2, 32):
        expected = baseline.generate(request([start], 200, 0, stop=frozenset({EOS_ID})))
        got = speculative.generate(request([start], 200, 0, stop=frozenset({EOS_ID})))
        assert got.tokens == expected.tokens
        assert got.stop_reason == expected.stop_reason
        stopped += expected.stop_reason == "eos"
    assert stopped > 5  # the check really exercised early stops
