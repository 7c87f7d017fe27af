"""SpecExec: tree attention against per-path forwards, exactness, greedy equality."""

from __future__ import annotations

from collections import Counter

import pytest
import torch
from helpers import make_method, request, toy_pair
from stats_utils import chi_square_pvalue
from test_exactness import LENGTH, POSITIONS, PROMPT, SAMPLES, _exact_triples

from specbench.decoding.execution import EngineSessions
from specbench.decoding.sampling import SamplingParams
from specbench.decoding.tree import TokenTree, TreeDrafter, walk_tree
from specbench.models.base import tree_path

ALPHA = 1e-3
TREE = ([-1, -1, 0, 0, 2, 1, 4], [7, 8, 9, 10, 11, 12, 13])


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_tree_attention_equals_a_forward_per_path(tiny_hf: dict, arch: str) -> None:
    from specbench.models.hf.loading import load_hf_model
    from specbench.models.specs import HFModelSpec

    folder = tiny_hf[arch]["target"]
    model = load_hf_model(
        HFModelSpec(model=str(folder), dtype="float32", device="cpu"), str(folder), "t"
    )
    reference = tiny_hf[arch]["target_model"]
    prefix = tiny_hf["tokenizer"].encode("the quick brown fox")
    parents, tokens = TREE
    session = model.new_session()
    session.logits_from(prefix[:3], 1)  # part of the prefix is cached already
    logits = session.tree_forward(prefix, parents[:4], tokens[:4])
    logits = torch.cat([logits, session.tree_extend(parents[4:], tokens[4:])])
    with torch.no_grad():
        expected = [reference(torch.tensor([prefix])).logits[0, -1]]
        for node in range(len(tokens)):
            path = prefix + tree_path(node, parents, tokens)
            expected.append(reference(torch.tensor([path])).logits[0, -1])
    assert torch.allclose(logits, torch.stack(expected), atol=1e-4)
    # Keeping one path leaves a cache equal to having decoded that path.
    session.commit_tree_path([1, 5])
    assert session.cached == prefix + [8, 12]
    assert session.cache.get_seq_length() == len(prefix) + 2
    after = session.logits_from(prefix + [8, 12, 20], len(prefix) + 2)[-1]
    with torch.no_grad():
        direct = reference(torch.tensor([prefix + [8, 12, 20]])).logits[0, -1]
    assert torch.allclose(after, direct, atol=1e-4)


def test_toy_tree_logits_follow_paths() -> None:
    models = toy_pair(vocab_size=24, order=2)
    session = models.target.new_session()
    parents, tokens = TREE
    logits = session.tree_forward([3, 4, 5], parents, tokens)
    for node in range(len(tokens)):
        assert torch.equal(
            logits[node + 1],
            models.target.next_logits([3, 4, 5] + tree_path(node, parents, tokens)),
        )


def test_tree_grows_best_first_within_budget_and_depth() -> None:
    models = toy_pair(vocab_size=24, order=1, distance=0.5)
    drafter = TreeDrafter(
        models.require_draft(), budget=12, max_depth=3, branching=3, beam=2, temperature=1.0
    )
    drafter.start([request([2], 10, temperature=1.0)], EngineSessions())
    tree = drafter.grow(0, [2, 3], max_depth=3)
    assert len(tree) == 12 and max(tree.depths) <= 3
    assert tree.candidates >= len(tree)
    # Every node's children are among the draft's most likely continuations of its path.
    for node, parent in enumerate(tree.parents):
        assert parent == -1 or tree.depths[node] == tree.depths[parent] + 1


def test_walk_keeps_the_path_the_target_samples_take() -> None:
    tree = TokenTree()
    a = tree.add(-1, 1, 1)
    tree.add(-1, 2, 1)
    tree.add(a, 3, 2)
    probs = torch.zeros(4, 5)
    probs[0, 1] = 1.0  # root: the target picks token 1 -> node a
    probs[1, 3] = 1.0  # node a: picks 3 -> node 2
    probs[3, 4] = 1.0  # node 2 (a leaf): picks 4, the bonus
    path, token, verified = walk_tree(tree, probs, None)
    assert path == [0, 2] and token == 4 and verified == 2


@pytest.mark.parametrize(("temperature", "top_p", "budget"), [(1.0, 1.0, 8), (0.7, 0.9, 16)])
def test_specexec_sampling_matches_target(temperature: float, top_p: float, budget: int) -> None:
    models = toy_pair(vocab_size=6, order=1, seed=11, distance=1.2)
    method = make_method("specexec", models, budget=budget, max_depth=4, branching=3, beam=3)
    sampling = SamplingParams(temperature=temperature, top_p=top_p)
    counts: dict[int, Counter] = {t: Counter() for t in POSITIONS}
    accepted = 0
    for seed in range(SAMPLES):
        result = method.generate(request(PROMPT, LENGTH, seed, temperature, None, top_p))
        accepted += result.stats.accepted
        for t in POSITIONS:
            counts[t][tuple(result.tokens[t : t + 3])] += 1
    assert accepted > SAMPLES  # trees really were accepted into
    exact = _exact_triples(models.target, sampling)
    pvalues = [chi_square_pvalue(counts[t], exact[t]) for t in POSITIONS]
    assert min(pvalues) > ALPHA / len(pvalues), pvalues


def test_broken_tree_walk_fails_the_exactness_check(monkeypatch: pytest.MonkeyPatch) -> None:
    """A walk that trusts the draft (descends into the most likely child) is not exact."""
    import specbench.decoding.core as core

    def trusting_walk(tree, probs, generator):
        children = tree.children()
        node, path = -1, []
        while children.get(node):
            kids = children[node]
            child = max(kids.values(), key=lambda c: float(probs[node + 1, tree.tokens[c]]))
            path.append(child)
            node = child
        return path, int(torch.multinomial(probs[node + 1], 1, generator=generator)), len(path)

    monkeypatch.setattr(core, "walk_tree", trusting_walk)
    models = toy_pair(vocab_size=6, order=1, seed=11, distance=1.2)
    method = make_method("specexec", models, budget=8, max_depth=4, branching=3, beam=3)
    counts: dict[int, Counter] = {t: Counter() for t in POSITIONS}
    for seed in range(SAMPLES // 3):
        tokens = method.generate(request(PROMPT, LENGTH, seed, 1.0)).tokens
        for t in POSITIONS:
            counts[t][tuple(tokens[t : t + 3])] += 1
    exact = _exact_triples(models.target, SamplingParams(temperature=1.0))
    assert min(chi_square_pvalue(counts[t], exact[t]) for t in POSITIONS) < 1e-6


@pytest.mark.parametrize(("budget", "max_depth"), [(4, 4), (16, 6), (32, 10)])
def test_specexec_greedy_equals_baseline_on_toy(budget: int, max_depth: int) -> None:
    models = toy_pair(vocab_size=32, order=2, seed=5, distance=1.0)
    baseline = make_method("baseline", models)
    specexec = make_method("specexec", models, budget=budget, max_depth=max_depth)
    for prompt in ([2], [3, 4, 5], list(range(2, 20))):
        assert (
            specexec.generate(request(prompt, 60)).tokens
            == baseline.generate(request(prompt, 60)).tokens
        )


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_specexec_greedy_equals_baseline_on_hf(tiny_hf: dict, arch: str) -> None:
    from specbench.models.loading import load_models
    from specbench.models.specs import HFModelSpec, ModelsSpec

    folders = tiny_hf[arch]
    models = load_models(
        ModelsSpec(
            target=HFModelSpec(model=str(folders["target"]), dtype="float32", device="cpu"),
            draft=HFModelSpec(model=str(folders["draft"]), dtype="float32", device="cpu"),
        )
    )
    baseline = make_method("baseline", models)
    specexec = make_method("specexec", models, budget=12, max_depth=5, branching=3, beam=4)
    accepted = 0
    for text in ("the quick brown", "def add(a, b):", "question: what is"):
        prompt = tiny_hf["tokenizer"].encode(text)
        result = specexec.generate(request(prompt, 40))
        assert result.tokens == baseline.generate(request(prompt, 40)).tokens
        accepted += result.stats.accepted
        for name in (
            "tree_size",
            "branch_prune_rate",
            "effective_parallelism",
            "max_active_branches",
        ):
            assert name in result.stats.extra
    assert accepted > 0
    # The KV cache keeps only accepted paths: the target processed each kept token once.
    assert models.target.counters.tokens_processed > 0


def test_tree_statistics_are_consistent() -> None:
    models = toy_pair(vocab_size=24, order=1, seed=3, distance=0.8)
    result = make_method("specexec", models, budget=10, max_depth=4).generate(
        request([2], 50, 0, 1.0)
    )
    stats = result.stats
    assert stats.accepted + stats.steps == 50
    assert 1 <= stats.extra["tree_size"] <= 10
    assert 0 <= stats.extra["branch_prune_rate"] < 1
    assert stats.extra["max_active_branches"] >= 1
    assert sum(stats.position_accepted) == stats.accepted
