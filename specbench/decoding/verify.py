"""Verifiers: given draft tokens, the draft's ``q`` and the target's ``p``, decide what to keep.

:class:`RejectionVerifier` is the one implementation of modified rejection sampling
(Leviathan et al., 2023; Chen et al., 2023) in specbench. It is exact for any ``q`` that is
the true distribution the drafts were drawn from, including one-hot ``q`` (deterministic
drafts, greedy drafting) and one-hot ``p`` (temperature 0, where it becomes greedy
verification). All tensors are batch-first so the same code serves batch size 1 and more.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import torch

from specbench.decoding.sampling import sample


@dataclass
class Verdict:
    """What a verifier decided for each row of a batch.

    ``accepted[b]`` draft tokens of row ``b`` are kept, followed by ``next_tokens[b]``: the
    correction drawn after a rejection, or the bonus token when every draft was accepted.
    ``expected_accept[b, i]`` is the probability that draft position ``i`` would be accepted
    given the prefix before it (``sum_x min(p, q)``), where the verifier can say; it lets a
    run compare measured acceptance with what theory predicts along the same trajectory.
    """

    accepted: torch.Tensor
    next_tokens: torch.Tensor
    expected_accept: torch.Tensor | None = None


@dataclass
class StepFeatures:
    """Hidden states of one verification step, for verifiers that learn (a judge).

    ``target_hidden[b, i]`` is the target's last hidden state at row ``i`` of the step: row 0
    is the last committed token, row ``i`` the draft token ``i`` (which it has seen).
    ``draft_hidden[b, i - 1]`` is the draft's hidden state at draft token ``i``, when the
    drafter collected it; it may stop one token short, with ``draft_hidden_last`` to compute
    the last token's ``[B, D]`` (a draft forward: call it only when that token matters).
    ``draft_positions[b, i - 1]`` is draft token ``i``'s position in the response (0 = the
    first generated token). ``target_logits[b, i]`` are the target's raw logits at row ``i``
    (before temperature and filtering, which at temperature 0 leave one-hot rows).
    """

    target_hidden: torch.Tensor
    draft_hidden: torch.Tensor | None = None
    draft_positions: torch.Tensor | None = None
    draft_hidden_last: Callable[[], torch.Tensor] | None = None
    target_logits: torch.Tensor | None = None


class Verifier(Protocol):
    """Decides how many draft tokens to keep and which token follows them.

    A verifier that sets ``needs_features = True`` receives :class:`StepFeatures`. One that
    sets ``greedy_is_argmax = True`` promises that at temperature 0 it keeps exactly the
    drafts that are the target's argmax and then emits the argmax; the loops then skip it
    and compare argmaxes (:mod:`specbench.decoding.greedy`).
    """

    needs_features: bool

    def verify(
        self,
        draft_tokens: torch.Tensor,
        draft_probs: torch.Tensor,
        target_probs: torch.Tensor,
        generator: torch.Generator | None,
        features: StepFeatures | None = None,
    ) -> Verdict:
        """``draft_tokens`` ``[B, k]``, ``draft_probs`` ``[B, k, V]``, ``target_probs``
        ``[B, k + 1, V]`` (the last row scores the bonus position)."""
        ...


def leading_accepts(accept: torch.Tensor) -> torch.Tensor:
    """Per row of ``accept`` ``[B, k]`` (bool), how many drafts precede the first rejection."""
    return accept.long().cumprod(dim=-1).sum(dim=-1)


class RejectionVerifier:
    """Modified rejection sampling: exact in distribution, greedy at temperature 0.

    Accept draft ``x_i ~ q_i`` with probability ``min(1, p_i(x_i) / q_i(x_i))``; at the first
    rejection draw from ``norm(max(0, p_i - q_i))``; if all ``k`` are accepted draw a bonus
    token from ``p_k``.

    At temperature 0 its verdict is the argmax comparison, which the loops compute from the
    logits instead (:mod:`specbench.decoding.greedy`, ``greedy_is_argmax``).
    """

    needs_features = False
    greedy_is_argmax = True

    def __init_subclass__(cls, **kwargs: object) -> None:
        # A subclass that decides differently must not inherit the argmax promise: the loops
        # would skip its verify at temperature 0. It may declare the promise again.
        super().__init_subclass__(**kwargs)
        if "verify" in cls.__dict__ and "greedy_is_argmax" not in cls.__dict__:
            cls.greedy_is_argmax = False

    def verify(
        self,
        draft_tokens: torch.Tensor,
        draft_probs: torch.Tensor,
        target_probs: torch.Tensor,
        generator: torch.Generator | None,
        features: StepFeatures | None = None,
    ) -> Verdict:
        batch, k = draft_tokens.shape
        if k == 0:
            return Verdict(
                accepted=torch.zeros(batch, dtype=torch.long, device=target_probs.device),
                next_tokens=sample(target_probs[:, 0], generator),
                expected_accept=target_probs.new_zeros(batch, 0),
            )
        index = draft_tokens.long().unsqueeze(-1)
        p_draft = target_probs[:, :k].gather(-1, index).squeeze(-1)
        q_draft = draft_probs.gather(-1, index).squeeze(-1)
        uniform = torch.rand(
            (batch, k), generator=generator, device=target_probs.device, dtype=p_draft.dtype
        )
        # u < p/q, written without the division; q(x) > 0 because x was drawn from q.
        accept = uniform * q_draft < p_draft
        accepted = leading_accepts(accept)

        rows = torch.arange(batch, device=target_probs.device)
        p_next = target_probs[rows, accepted]
        q_next = torch.cat([draft_probs, torch.zeros_like(draft_probs[:, :1])], dim=1)[
            rows, accepted
        ]
        residual = (p_next - q_next).clamp(min=0)
        mass = residual.sum(dim=-1, keepdim=True)
        # After a rejection the residual has mass (p(x) < q(x) somewhere forces p > q
        # elsewhere); at the bonus position q_next is zero so the residual is p itself. The
        # fallback to p only guards against round-off when p and q are numerically equal.
        next_dist = torch.where(mass > 1e-12, residual / mass.clamp(min=1e-30), p_next)
        expected = torch.minimum(target_probs[:, :k], draft_probs).sum(dim=-1)
        return Verdict(
            accepted=accepted,
            next_tokens=sample(next_dist, generator),
            expected_accept=expected,
        )


class SyntheticVerifier:
    """For timing only: accept each draft token with a fixed probability, whatever it is.

    With random-weight (dummy) models real acceptance is near zero, so speed against
    acceptance can only be measured by fixing acceptance. The tokens this produces are not
    the target's: runs that use it are marked ``synthetic`` and never reported as exact.
    After a rejection, or after all drafts, the next token is the target's own sample.
    """

    needs_features = False

    def __init__(self, acceptance: float) -> None:
        if not 0.0 <= acceptance <= 1.0:
            raise ValueError("synthetic acceptance must be in [0, 1]")
        self.acceptance = acceptance

    def verify(
        self,
        draft_tokens: torch.Tensor,
        draft_probs: torch.Tensor,
        target_probs: torch.Tensor,
        generator: torch.Generator | None,
        features: StepFeatures | None = None,
    ) -> Verdict:
        batch, k = draft_tokens.shape
        uniform = torch.rand((batch, k), generator=generator, device=target_probs.device)
        accepted = leading_accepts(uniform < self.acceptance)
        rows = torch.arange(batch, device=target_probs.device)
        return Verdict(
            accepted=accepted, next_tokens=sample(target_probs[rows, accepted], generator)
        )


class TypicalAcceptanceVerifier:
    """Medusa's typical acceptance (Cai et al., 2024), **lossy**: keep draft token ``x_i``
    while the target gives it ``p_i(x_i) > min(epsilon, delta * exp(-H(p_i)))``, then sample
    the next token from ``p`` at the first position kept no further. Confident rows accept
    only their likely tokens; flat rows accept more. Output follows neither the target's
    distribution nor, at temperature 0, its greedy choice: methods using it set
    ``exact = False``.
    """

    needs_features = False

    def __init__(self, epsilon: float = 0.09, delta: float = 0.3) -> None:
        self.epsilon = epsilon
        self.delta = delta

    def verify(
        self,
        draft_tokens: torch.Tensor,
        draft_probs: torch.Tensor,
        target_probs: torch.Tensor,
        generator: torch.Generator | None,
        features: StepFeatures | None = None,
    ) -> Verdict:
        batch, k = draft_tokens.shape
        device = target_probs.device
        if k == 0:
            accepted = torch.zeros(batch, dtype=torch.long, device=device)
        else:
            p = target_probs[:, :k]
            entropy = -(p * p.clamp(min=1e-30).log()).sum(dim=-1)
            threshold = torch.minimum(
                torch.full_like(entropy, self.epsilon), self.delta * torch.exp(-entropy)
            )
            chosen = p.gather(-1, draft_tokens.long().unsqueeze(-1)).squeeze(-1)
            accepted = leading_accepts(chosen > threshold)
        rows = torch.arange(batch, device=device)
        next_tokens = sample(target_probs[rows, accepted], generator)
        return Verdict(accepted=accepted, next_tokens=next_tokens)
