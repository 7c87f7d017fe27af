"""The greedy path: verification at temperature 0 by argmax comparisons alone.

At temperature 0 :func:`~specbench.decoding.sampling.logits_to_probs` turns each row into a
one-hot distribution, and modified rejection sampling on one-hot ``p`` and ``q`` keeps a
draft exactly when it is the target's argmax, then emits the argmax at the first mismatch
(or the bonus position). This module computes that verdict from the raw logits, without
materialising a vocabulary-sized distribution per row or drawing from one: the same tokens,
none of the cost. Sampling (temperature > 0) never comes here and stays exactly as audited.

Verifiers whose greedy verdict is this one declare ``greedy_is_argmax = True`` (the
rejection verifier); lossy or learned verifiers keep their own path. ``ENABLED`` exists so
tests can run the general path on the same requests and compare token for token.
"""

from __future__ import annotations

import torch

from specbench.decoding.sampling import SamplingParams
from specbench.decoding.verify import Verdict, Verifier, leading_accepts

#: Tests turn the shortcut off to compare it with the general path.
ENABLED = True


def greedy_applies(sampling: SamplingParams, verifier: Verifier | None = None) -> bool:
    """Whether this step may take the argmax path: temperature 0 and a verifier whose
    greedy verdict is the argmax comparison (``None``: the caller's own greedy choice)."""
    if not ENABLED or not sampling.greedy:
        return False
    return verifier is None or bool(getattr(verifier, "greedy_is_argmax", False))


def greedy_verdict(draft_tokens: torch.Tensor, target_logits: torch.Tensor) -> Verdict:
    """The rejection verifier's temperature-0 verdict from logits.

    ``draft_tokens`` ``[B, k]``, ``target_logits`` ``[B, k + 1, V]``. ``expected_accept`` is
    1 where the draft is the argmax, as ``sum_x min(p, q)`` is for one-hot rows.
    """
    choice = target_logits.argmax(dim=-1)  # [B, k + 1]
    k = draft_tokens.shape[1]
    matches = draft_tokens.long() == choice[:, :k]
    accepted = leading_accepts(matches)
    rows = torch.arange(choice.shape[0], device=choice.device)
    return Verdict(
        accepted=accepted,
        next_tokens=choice[rows, accepted],
        expected_accept=matches.float(),
    )


def greedy_token(logits: torch.Tensor) -> torch.Tensor:
    """The argmax of the last dimension: a deterministic draft's token at temperature 0."""
    return logits.argmax(dim=-1)
