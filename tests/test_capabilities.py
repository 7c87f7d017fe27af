"""Capabilities: methods and heads read a model's internals only through the protocols of
specbench.models.capabilities, which the HF backend implements and others may."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from helpers import hf_pair, toy_pair

from specbench.errors import PluginError
from specbench.judge.continuations import _through_session, greedy_continuations
from specbench.models.capabilities import (
    InternalStates,
    TransformersModel,
    internal_states,
    transformers_model,
)


def test_a_model_without_a_capability_is_refused_in_one_line() -> None:
    target = toy_pair().target
    with pytest.raises(PluginError) as refused:
        internal_states(target, "eagle3")
    message = str(refused.value)
    assert "eagle3 needs the target's internal states" in message and "\n" not in message
    assert "backend = 'hf'" in message and "InternalStates" in message
    with pytest.raises(PluginError, match="hf-generate needs a transformers model"):
        transformers_model(target, "hf-generate")


def test_the_hf_backend_offers_both_capabilities(tiny_hf: dict[str, Any]) -> None:
    target = hf_pair(tiny_hf, "qwen2").target
    assert isinstance(target, InternalStates) and isinstance(target, TransformersModel)
    module: Any = target.transformers_module()
    shape = target.architecture()
    assert (shape.hidden_size, shape.vocab_size) == (
        module.config.hidden_size,
        module.config.vocab_size,
    )
    assert shape.num_layers == module.config.num_hidden_layers
    assert shape.class_names == ("Qwen2ForCausalLM",)
    assert target.output_weight().shape == (shape.vocab_size, shape.hidden_size)


def test_captured_final_states_give_the_sessions_logits(tiny_hf: dict[str, Any]) -> None:
    """The final states a capture records, through the output layer, are the logits the
    session returned for the same call: the capture reads the right tensor."""
    target = hf_pair(tiny_hf, "llama").target
    states = internal_states(target, "test")
    assert states.final_states_readable()
    tokens = target.tokenizer.encode("the quick brown fox")
    with states.capture_final_states() as capture:
        logits = target.new_session().logits_from(tokens, 0)
        final = capture.take()
    assert final is not None and final.shape[0] == len(tokens)
    torch.testing.assert_close(states.logits_of_states(final), logits.float().cpu())


def test_batched_continuations_equal_one_at_a_time(tiny_hf: dict[str, Any]) -> None:
    """Label mining's batched path (left padding, generate) continues every prefix exactly as
    the session path does, token for token, with the same prefix state and logits."""
    target = hf_pair(tiny_hf, "llama").target
    prefixes = [target.tokenizer.encode(t) for t in ("def add(a, b):", "the lazy", "question")]
    stop = frozenset(target.tokenizer.eos_token_ids)
    batched = greedy_continuations(target, prefixes, 12, stop, batch_size=3)
    for prefix, got in zip(prefixes, batched, strict=True):
        alone = _through_session(target, prefix, 12, stop)
        assert got.tokens == alone.tokens
        torch.testing.assert_close(got.prefix_hidden, alone.prefix_hidden, atol=1e-4, rtol=1e-4)
        assert got.prefix_logits is not None and alone.prefix_logits is not None
        torch.testing.assert_close(got.prefix_logits, alone.prefix_logits, atol=1e-4, rtol=1e-4)
