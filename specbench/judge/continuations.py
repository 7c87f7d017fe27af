"""Greedy continuations of many prefixes for label mining, with the target's state at each.

A model that offers :class:`~specbench.models.capabilities.InternalStates` continues them in
batches (left padding, one ``generate`` per batch); any other model through sessions, one
prefix after another.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from specbench.models.base import LanguageModel
from specbench.models.capabilities import InternalStates


@dataclass
class Continuation:
    """A greedy continuation, the hidden state at the last token of its prefix, and the raw
    logits at the token before it: the distribution the prefix's last token was chosen from
    (``None`` for a one-token prefix). Label mining puts the draft's token last, so these
    are the target's logits at the mismatch."""

    tokens: list[int]
    prefix_hidden: torch.Tensor
    prefix_logits: torch.Tensor | None = None


def greedy_continuations(
    model: LanguageModel,
    prefixes: Sequence[Sequence[int]],
    max_new_tokens: int,
    stop_ids: frozenset[int],
    batch_size: int = 8,
) -> list[Continuation]:
    """Greedy continuation of each prefix (at most ``max_new_tokens``, ending at a stop id),
    with the hidden state at the prefix's last token and the logits that predicted it."""
    if isinstance(model, InternalStates):
        return _batched(model, prefixes, max_new_tokens, stop_ids, batch_size)
    return [_through_session(model, prefix, max_new_tokens, stop_ids) for prefix in prefixes]


def _through_session(
    model: LanguageModel, prefix: Sequence[int], max_new_tokens: int, stop_ids: frozenset[int]
) -> Continuation:
    session = model.new_session()
    first = session.forward_from(prefix, max(0, len(prefix) - 2), hidden=True)
    assert first.hidden is not None
    before_last = first.logits[0] if len(first.logits) > 1 else None
    sequence = list(prefix)
    tokens: list[int] = []
    logits = first.logits[-1]
    while True:
        token = int(logits.argmax())
        tokens.append(token)
        sequence.append(token)
        if token in stop_ids or len(tokens) >= max_new_tokens:
            break
        logits = session.logits_from(sequence, len(sequence) - 1)[-1]
    return Continuation(tokens, first.hidden[-1], before_last)


def _batched(
    model: InternalStates,
    prefixes: Sequence[Sequence[int]],
    max_new_tokens: int,
    stop_ids: frozenset[int],
    batch_size: int,
) -> list[Continuation]:
    pad = next(iter(stop_ids), 0)
    out: list[Continuation] = []
    for start in range(0, len(prefixes), batch_size):
        batch = [list(p) for p in prefixes[start : start + batch_size]]
        width = max(len(p) for p in batch)
        ids = torch.full((len(batch), width), pad, dtype=torch.long)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        for row, prefix in enumerate(batch):
            ids[row, width - len(prefix) :] = torch.tensor(prefix)
            mask[row, width - len(prefix) :] = 1
        generated = model.generate_greedy_with_states(
            ids, mask, max_new_tokens, sorted(stop_ids), pad_id=None
        )
        # The last layer's states are the final norm's output, what the output layer
        # reads: the state before the last prefix token gives the logits it came from.
        prefill = generated.hidden_states[0][-1]
        prefill_hidden = prefill[:, -1].float().cpu()
        before_last = model.logits_of_states(prefill[:, -2]) if width > 1 else None
        new = generated.sequences[:, width:].cpu()
        for row in range(len(batch)):
            tokens: list[int] = []
            for token in new[row].tolist():
                tokens.append(token)
                if token in stop_ids:
                    break
            out.append(
                Continuation(
                    tokens,
                    prefill_hidden[row],
                    None if before_last is None or len(batch[row]) < 2 else before_last[row],
                )
            )
    return out
