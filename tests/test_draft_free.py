"""Draft-free methods: Suffix Decoding, Lookahead decoding, Token Recycling.

Greedy claims are checked token for token against the baseline; sampling claims with the
triple test of ``test_exactness`` (chi-square, ALPHA = 1e-3 per test, Bonferroni over the
positions, fixed seeds) on the order-1 toy chain whose distributions are known exactly.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from helpers import make_method, request, toy_pair
from test_exactness import ALPHA, LENGTH, PROMPT, _triple_pvalues

from specbench.decoding.lookahead import NgramPool
from specbench.decoding.recycling import AdjacencyMatrix
from specbench.decoding.sampling import SamplingParams
from specbench.decoding.suffix import IncrementalSuffixTrie, SuffixTrie, speculate
from specbench.models.toy import EOS_ID

METHODS = {
    "suffix": {},
    "lookahead": {"window": 4, "ngram": 3, "pool_size": 4},
    "token-recycling": {"top_k": 4, "branching": [3, 2, 1], "max_nodes": 12},
}
REPETITIVE = [[2, 3, 4, 5, 2, 3, 4, 5, 2, 3], list(range(2, 30)), [7, 7, 7, 7]]


@pytest.mark.parametrize("name", list(METHODS))
def test_greedy_output_equals_the_baseline(name: str) -> None:
    models = toy_pair(vocab_size=32, order=2, seed=5)
    baseline = make_method("baseline", models)
    method = make_method(name, models, **METHODS[name])
    accepted = 0
    for seed, prompt in enumerate(REPETITIVE * 2):  # the second pass sees a warm method
        expected = baseline.generate(request(prompt, 60, seed)).tokens
        result = method.generate(request(prompt, 60, seed + 50))
        assert result.tokens == expected
        accepted += result.stats.accepted
        assert result.stats.target_calls == result.stats.steps
    assert accepted > 20  # the drafts were really used, and verified


@pytest.mark.parametrize("name", list(METHODS))
def test_greedy_stops_at_eos_like_the_baseline(name: str) -> None:
    models = toy_pair(vocab_size=32, order=1, seed=9, eos_bias=2.5)
    baseline = make_method("baseline", models)
    method = make_method(name, models, **METHODS[name])
    for start in range(2, 14):
        stop = frozenset({EOS_ID})
        expected = baseline.generate(request([start, start + 1], 120, 0, stop=stop))
        got = method.generate(request([start, start + 1], 120, 0, stop=stop))
        assert got.tokens == expected.tokens and got.stop_reason == expected.stop_reason


@pytest.mark.parametrize("name", list(METHODS))
def test_sampling_follows_the_target_distribution(name: str) -> None:
    models = toy_pair(vocab_size=6, order=1, seed=11)
    method = make_method(name, models, **METHODS[name])
    sampling = SamplingParams(temperature=0.9, top_k=5)

    def generate(seed: int) -> list[int]:
        return method.generate(request(PROMPT, LENGTH, seed, 0.9, 5)).tokens

    pvalues = _triple_pvalues(generate, models, sampling)
    assert min(pvalues) > ALPHA / len(pvalues), pvalues


def test_draft_free_methods_accept_at_temperature_above_zero() -> None:
    """Not only exact but useful: their trees are accepted on a peaked chain."""
    models = toy_pair(vocab_size=8, order=1, seed=3, sharpness=4.0)
    for name, params in METHODS.items():
        method = make_method(name, models, **params)
        total = sum(
            method.generate(request([2, 3], 60, seed, temperature=0.7)).stats.accepted
            for seed in range(5)
        )
        assert total > 10, name


# ----------------------------------------------------------------------------- suffix tries


def test_suffix_trie_counts_windows_and_removes_them() -> None:
    trie = SuffixTrie(max_depth=3)
    trie.add_sequence([1, 2, 3, 1, 2, 4])
    node, length = trie.match([9, 1, 2], 8)
    assert length == 2 and node is not None
    assert {t: c.count for t, c in node.children.items()} == {3: 1, 4: 1}
    nodes = trie.nodes
    trie.add_sequence([1, 2, 3, 1, 2, 4], sign=-1)
    assert trie.nodes == 0 and not trie.root.children and nodes > 0


def test_incremental_trie_equals_a_trie_built_at_once() -> None:
    tokens = [5, 6, 5, 6, 7, 5, 6, 5]
    grown = IncrementalSuffixTrie(max_depth=4)
    grown.extend(tokens[:3])
    grown.extend(tokens[3:])
    whole = SuffixTrie(max_depth=4)
    whole.add_sequence(tokens)

    def flat(node, prefix=()):  # type: ignore[no-untyped-def]
        out = {}
        for token, child in node.children.items():
            out[(*prefix, token)] = child.count
            out.update(flat(child, (*prefix, token)))
        return out

    assert flat(grown.root) == flat(whole.root) and grown.nodes == whole.nodes


def test_speculation_is_best_first_and_respects_min_prob_and_size() -> None:
    trie = SuffixTrie(max_depth=4)
    for _ in range(3):
        trie.add_sequence([1, 2, 3, 9])
    trie.add_sequence([1, 2, 4, 9])
    node, length = trie.match([1, 2], 8)
    assert node is not None
    candidate = speculate(node, length, "request", max_nodes=3, min_token_prob=0.2)
    assert [tokens for tokens, _ in candidate.paths] == [[3], [3, 9], [4]]
    assert [round(p, 2) for _, p in candidate.paths] == [0.75, 0.75, 0.25]
    strict = speculate(node, length, "request", max_nodes=10, min_token_prob=0.5)
    assert [tokens for tokens, _ in strict.paths] == [[3], [3, 9]]


def test_suffix_global_trie_helps_a_repeated_request_and_stays_bounded() -> None:
    models = toy_pair(vocab_size=32, order=2, seed=5)
    method = make_method("suffix", models, max_cached_requests=2)
    first = method.generate(request([2, 9], 50, 0))
    second = method.generate(request([2, 9], 50, 0))
    assert second.tokens == first.tokens
    assert second.stats.extra["suffix_global_hit_rate"] > 0
    assert first.stats.extra["suffix_global_hit_rate"] == 0
    assert second.stats.target_calls < first.stats.target_calls
    for prompt in ([3], [4], [5]):
        method.generate(request(prompt, 20, 0))
    assert len(method.proposer._cached_outputs) == 2


# ----------------------------------------------------------------------------- recycling, pool


def test_adjacency_matrix_updates_saves_and_loads(tmp_path: Path) -> None:
    matrix = AdjacencyMatrix(vocab_size=10, top_k=2)
    logits = torch.zeros(2, 10)
    logits[0, 7], logits[0, 3] = 5.0, 4.0
    logits[1, 1], logits[1, 2] = 3.0, 2.0
    matrix.update([4, 5], logits)
    assert matrix.rows[4].tolist() == [7, 3] and matrix.rows[5].tolist() == [1, 2]
    assert matrix.coverage() == pytest.approx(0.2)
    matrix.save(tmp_path / "m.pt")
    other = AdjacencyMatrix(vocab_size=10, top_k=2)
    other.load(tmp_path / "m.pt")
    assert torch.equal(other.rows, matrix.rows)
    with pytest.raises(ValueError, match="needs"):
        AdjacencyMatrix(vocab_size=11, top_k=2).load(tmp_path / "m.pt")


def test_token_recycling_matrix_persists_across_prompts_and_files(tmp_path: Path) -> None:
    from specbench.plugins import RunContext

    models = toy_pair(vocab_size=32, order=1, seed=5)
    method = make_method("token-recycling", models, matrix_path="matrix.pt")
    context = RunContext.__new__(RunContext)
    context.base_dir = tmp_path
    method.prepare(context)
    method.generate(request([2, 3], 40, 0))
    coverage = method.proposer.matrix.coverage()
    assert coverage > 0 and (tmp_path / "matrix.pt").exists()
    fresh = make_method("token-recycling", models, matrix_path="matrix.pt")
    fresh.prepare(context)
    assert fresh.proposer.matrix.coverage() == coverage
    warm = fresh.generate(request([2, 3], 40, 0))
    cold = make_method("token-recycling", models).generate(request([2, 3], 40, 0))
    assert warm.tokens == cold.tokens and warm.stats.accepted >= cold.stats.accepted


def test_ngram_pool_keeps_the_latest_distinct_continuations() -> None:
    pool = NgramPool(capacity=2)
    for ngram in ((1, 2, 3), (1, 4, 5), (1, 2, 3), (1, 6, 7)):
        pool.add(ngram)
    assert pool.lookup(1) == [(6, 7), (2, 3)] and len(pool) == 2


def test_warm_up_leaves_no_cross_request_state(tmp_path: Path) -> None:
    """The warm-up decodes prompt 0, which is then timed: a suffix trie or a recycling matrix
    that kept the warm-up's output would accept prompt 0's timed sample whole."""
    from specbench.plugins import discover_methods
    from specbench.presets.schema import load_preset
    from specbench.records import SampleRecord, read_records
    from specbench.run.runner import run_preset

    preset = tmp_path / "p.toml"
    preset.write_text(
        '[models.target]\nbackend = "toy"\nvocab_size = 32\norder = 2\nseed = 5\n'
        '[[methods]]\nname = "baseline"\n[[methods]]\nname = "suffix"\n'
        '[[methods]]\nname = "token-recycling"\n'
        '[prompts]\nsource = "inline"\nprompts = ["abc", "xyz"]\n'
        "[sampling]\ntemperature = 0.0\nmax_new_tokens = 40\n[runs]\ncount = 1\nwarmup = 2\n"
    )
    with_warmup = tmp_path / "warm.jsonl"
    run_preset(load_preset(str(preset), discover_methods()), output=with_warmup)
    cold = tmp_path / "cold.jsonl"
    run_preset(load_preset(str(preset), discover_methods(), [("runs.warmup", 0)]), output=cold)

    def steps(path: Path) -> dict:  # type: ignore[type-arg]
        return {
            (r.method, r.prompt_id): (r.steps, r.accepted)
            for r in read_records(path)
            if isinstance(r, SampleRecord)
        }

    assert steps(with_warmup) == steps(cold)
