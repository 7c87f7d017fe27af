"""The execution core: every proposer runs on every executor and gives the same tokens.

One loop (``specbench.decoding.core.decode``) serves every in-process method; the engine
(eager, static caches) and the batch come from the method's common fields. Greedy decoding
on tiny float32 Hugging Face models is deterministic, so each method must give the eager
single-sequence tokens token for token whether it runs with static caches or batched, and
its greedy output must equal the baseline's.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch
from helpers import hf_pair, make_method, request, toy_pair
from pydantic import ValidationError
from test_greedy_path import METHODS, PROMPTS  # every exact method without trained heads

from specbench.decoding.core import decode
from specbench.decoding.execution import EngineSessions, Execution
from specbench.decoding.proposers import Outcome, Proposal, RowProposer, Slot
from specbench.decoding.tree import TokenTree
from specbench.plugins import MethodModels, discover_methods

#: Methods whose drafts depend on earlier requests (Suffix Decoding's global trie, Token
#: Recycling's matrix): a batch's rows learn from each other only after (suffix) or while
#: (recycling) they decode, so their drafts, not their tokens, differ from one at a time.
SHARED_STATE = {"suffix", "token-recycling"}


@pytest.fixture(scope="module")
def pair(tiny_hf: dict[str, Any]) -> MethodModels:
    return hf_pair(tiny_hf)


def _tokens(models: MethodModels, name: str, batched: bool = False, **params: Any) -> list[Any]:
    method = make_method(name, models, **METHODS[name], **params)
    requests = [request(prompt, 16) for prompt in PROMPTS]
    results = method.generate_batch(requests) if batched else [method.generate(r) for r in requests]
    return [(r.tokens, r.stats.accepted, r.stats.proposed, r.stats.steps) for r in results]


@pytest.mark.parametrize("name", list(METHODS))
def test_every_method_gives_the_same_tokens_on_every_executor(
    pair: MethodModels, name: str
) -> None:
    with torch.inference_mode():
        eager = _tokens(pair, name)
        static = _tokens(pair, name, engine="static", static_max_len=128)
        batched = _tokens(pair, name, batched=True, batch_size=3)
        baseline = [tokens for tokens, *_ in _tokens(pair, "baseline")]
    assert static == eager, "static"
    if name in SHARED_STATE:
        batched, eager = [row[:1] for row in batched], [row[:1] for row in eager]
    assert batched == eager, "batched"
    assert [tokens for tokens, *_ in eager] == baseline  # greedy: exact


def test_a_static_session_scores_trees_as_the_eager_session_does(pair: MethodModels) -> None:
    """Tree attention in the static cache (rounds of nodes, then the accepted path moved
    into place) gives the dynamic cache's logits."""
    model = pair.target
    sessions = EngineSessions(Execution(engine="static", static_max_len=128))
    static = sessions.session(model, 64)
    eager = model.new_session()
    sequence = [5, 9, 23, 7]
    parents, tokens = [-1, -1, 0, 0, 2], [11, 12, 13, 14, 15]
    with torch.inference_mode():
        for session in (static, eager):
            session.tree_forward(sequence, parents[:2], tokens[:2])
        # A second round of nodes below the first (how a draft tree grows).
        grown = [s.tree_extend(parents[2:], tokens[2:]) for s in (static, eager)]
        assert torch.allclose(grown[0], grown[1], atol=1e-4)
        for session in (static, eager):
            session.commit_tree_path([0, 2, 4])  # tokens 11, 13, 15
        after = [s.logits_from(sequence + [11, 13, 15, 30], 6) for s in (static, eager)]
    assert torch.allclose(after[0], after[1], atol=1e-4)
    with torch.inference_mode():
        fresh = model.new_session().logits_from(sequence + [11, 13, 15, 30], 6)
    assert torch.allclose(after[0], fresh, atol=1e-4)
    sessions.close()


def test_static_sessions_come_from_a_pool_and_go_back_to_it(pair: MethodModels) -> None:
    """Two sequences on one model at once (a target drafting for itself) get two caches."""
    sessions = EngineSessions(Execution(engine="static", static_max_len=128))
    first = sessions.session(pair.target, 32)
    second = sessions.session(pair.target, 32)
    assert first.decoder is not second.decoder  # type: ignore[attr-defined]
    sessions.close()
    again = EngineSessions(Execution(engine="static", static_max_len=128))
    reused = again.session(pair.target, 32)
    assert reused.decoder in (first.decoder, second.decoder)  # type: ignore[attr-defined]
    again.close()


class _Counting(RowProposer):
    """Proposes the row's own last token twice; records what it heard."""

    max_chain = 2

    def __init__(self) -> None:
        super().__init__()
        self.heard: list[Outcome] = []

    def propose_row(self, slot: Slot) -> Proposal:
        self.calls[slot.row] += 1
        return Proposal([slot.sequence[-1]] * min(2, slot.budget))

    def observe_row(self, outcome: Outcome) -> None:
        self.heard.append(outcome)

    def stats(self, row: int) -> dict[str, float]:
        return {"row": float(row)}


def test_a_new_proposer_gets_batching_and_per_row_records() -> None:
    models = toy_pair(vocab_size=24, order=1, seed=3)
    proposer = _Counting()
    requests = [request([1, 2, 3], 10), request([4, 5], 6)]
    results = decode(requests, models.target, proposer)
    assert [len(r.tokens) for r in results] == [10, 6]
    assert [r.stats.extra["row"] for r in results] == [0.0, 1.0]
    assert [r.stats.draft_calls for r in results] == [r.stats.steps for r in results]
    assert all(r.latency_s is not None for r in results)
    assert {o.row for o in proposer.heard} == {0, 1}
    for outcome in proposer.heard:
        assert outcome.logits is not None and outcome.logits.shape[0] == outcome.proposed + 1


class _Tree(RowProposer):
    drafts_trees = True
    batchable = False

    def propose_row(self, slot: Slot) -> TokenTree:
        return TokenTree.chain([slot.sequence[-1]][: slot.budget])


def test_the_core_refuses_to_batch_a_proposer_that_reads_one_sequence() -> None:
    models = toy_pair(vocab_size=24, order=1, seed=3)
    with pytest.raises(ValueError, match="one sequence at a time"):
        decode([request([1, 2], 4), request([3, 4], 4)], models.target, _Tree())
    assert len(decode([request([1, 2], 4)], models.target, _Tree())[0].tokens) == 4


@pytest.mark.parametrize(
    ("name", "params", "message"),
    [
        ("baseline", {"engine": "static", "batch_size": 2}, "one sequence at a time"),
        ("eagle3", {"batch_size": 2}, "less than or equal to 1"),
        ("medusa-typical", {"tree": True}, "verifies chains only"),
    ],
)
def test_execution_fields_that_cannot_work_together_are_refused_up_front(
    name: str, params: dict[str, Any], message: str
) -> None:
    info = discover_methods().get(name)
    with pytest.raises(ValidationError, match=message):
        info.cls.Params.model_validate(params)
