"""Toy models: exact, deterministic, and sessions that never re-encode their prefix."""

from __future__ import annotations

import pytest
import torch
from helpers import make_method, request, toy_pair

from specbench.models.toy import EOS_ID, ToyConfig, ToyLanguageModel, ToyTokenizer


def test_same_config_same_model_and_distance_moves_the_draft() -> None:
    a = ToyLanguageModel(ToyConfig(seed=4, order=2))
    b = ToyLanguageModel(ToyConfig(seed=4, order=2))
    near = ToyLanguageModel(ToyConfig(seed=4, order=2, distance=0.1))
    far = ToyLanguageModel(ToyConfig(seed=4, order=2, distance=3.0))
    assert torch.equal(a.table, b.table)
    gap_near = (near.table - a.table)[:, 1:].abs().mean()  # column 0 is EOS: -inf
    gap_far = (far.table - a.table)[:, 1:].abs().mean()
    assert 0 < gap_near < gap_far


def test_logits_depend_on_the_last_order_tokens_only() -> None:
    model = ToyLanguageModel(ToyConfig(seed=1, order=2, vocab_size=10))
    assert torch.equal(model.next_logits([5, 3, 4]), model.next_logits([9, 3, 4]))
    assert not torch.equal(model.next_logits([5, 3, 4]), model.next_logits([5, 4, 3]))


def test_session_logits_match_exact_logits_after_rollback() -> None:
    model = ToyLanguageModel(ToyConfig(seed=2, order=2, vocab_size=10))
    session = model.new_session()
    sequence = [3, 4, 5, 6, 7]
    rows = session.logits_from(sequence, 2)
    for i, row in enumerate(rows):
        assert torch.equal(row, model.next_logits(sequence[: 3 + i]))
    # A different continuation after position 3 rolls the cache back to the shared prefix.
    other = [3, 4, 5, 9, 9]
    rows = session.logits_from(other, 3)
    assert session.cached == other
    assert torch.equal(rows[-1], model.next_logits(other))


def test_eos_is_never_produced_unless_biased() -> None:
    silent = ToyLanguageModel(ToyConfig(seed=0))
    assert torch.isinf(silent.table[:, EOS_ID]).all()
    talkative = ToyLanguageModel(ToyConfig(seed=0, eos_bias=1.0))
    assert torch.isfinite(talkative.table[:, EOS_ID]).all()


def test_tokenizer_round_trip() -> None:
    tokenizer = ToyTokenizer(48)
    ids = tokenizer.encode("hello world")
    assert tokenizer.decode(ids) == "hello world"
    assert ToyTokenizer(8).decode(ToyTokenizer(8).encode("xyz")) == "\N{REPLACEMENT CHARACTER}" * 3


def test_oversized_table_is_refused() -> None:
    with pytest.raises(ValueError, match="too large"):
        ToyLanguageModel(ToyConfig(vocab_size=4096, order=3))


@pytest.mark.parametrize("method", ["baseline", "speculative"])
def test_no_step_reencodes_the_prefix(method: str) -> None:
    """Each model processes every position it ever sees about once, not once per step."""
    models = toy_pair(vocab_size=32, order=2, distance=1.0)
    params = {"k": 4} if method == "speculative" else {}
    decoder = make_method(method, models, **params)
    prompt = list(range(2, 22))
    result = decoder.generate(request(prompt, 60, 0, temperature=1.0))
    target = models.target.counters
    total = len(prompt) + len(result.tokens)
    # The target sees the prompt once, then each step only the new token and the drafts.
    assert target.tokens_processed <= total + result.stats.proposed
    assert target.forward_calls == result.stats.target_calls
    if method == "speculative":
        draft = models.draft.counters
        # The draft re-feeds at most the one token it had not processed per step.
        assert draft.tokens_processed <= total + result.stats.proposed + result.stats.steps
