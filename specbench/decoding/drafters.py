"""Drafters propose tokens for the target to verify.

A drafter is told the committed sequence and how many tokens it may propose at most; it
returns the tokens and, when it drew them at random, the distributions it drew them from.
After verification it hears how many were accepted, so it can adapt (as Hugging Face's
candidate generators do). Draft model, n-gram lookup and trees are all drafters; the loop and
the verifier stay the same.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from specbench.decoding.sampling import logits_to_probs, one_hot, sample
from specbench.decoding.types import GenerationRequest
from specbench.models.base import LanguageModel, Session


@dataclass
class Proposal:
    """Draft tokens and ``probs`` (``[k, V]``), the distributions they were drawn from.

    ``probs`` is ``None`` for a deterministic drafter; the verifier then uses one-hot rows,
    which is exact: the draft distribution of a deterministic proposal is a point mass.
    """

    tokens: list[int]
    probs: torch.Tensor | None = None

    def draft_probs(self, vocab_size: int, device: torch.device) -> torch.Tensor:
        """``probs`` on ``device``, or one-hot rows for a deterministic proposal."""
        if self.probs is not None:
            return self.probs.to(device)
        return one_hot(torch.tensor(self.tokens, dtype=torch.long, device=device), vocab_size)


class Drafter(ABC):
    """Proposes draft tokens; see the module docstring."""

    def __init__(self) -> None:
        self.calls = 0

    def start(self, request: GenerationRequest) -> None:
        """Called once before each generation; drop per-sequence state here."""
        self.calls = 0

    @abstractmethod
    def propose(self, sequence: Sequence[int], max_tokens: int) -> Proposal:
        """Up to ``max_tokens`` tokens to follow ``sequence`` (prompt plus accepted output)."""

    def observe(self, proposed: int, accepted: int) -> None:  # noqa: B027 - optional hook
        """Hear how a proposal fared; the default ignores it."""


class NoDrafter(Drafter):
    """Proposes nothing: the speculative loop then decodes one target token per call."""

    def propose(self, sequence: Sequence[int], max_tokens: int) -> Proposal:
        return Proposal(tokens=[])


class ModelDrafter(Drafter):
    """Samples ``k`` tokens autoregressively from a draft model, keeping its KV cache.

    Tokens are drawn through the same logits processing as the target's, so ``q`` is exactly
    the distribution each draft token came from.
    """

    def __init__(self, model: LanguageModel, k: int) -> None:
        super().__init__()
        self.model = model
        self.k = k
        self._session: Session | None = None
        self._request: GenerationRequest | None = None
        self._generator: torch.Generator | None = None

    def start(self, request: GenerationRequest) -> None:
        super().start(request)
        self._request = request
        self._session = self.model.new_session()
        self._generator = request.generator(self.model.device, stream=1)

    def propose(self, sequence: Sequence[int], max_tokens: int) -> Proposal:
        if self._session is None or self._request is None:
            raise RuntimeError("ModelDrafter.propose called before start()")
        draft = list(sequence)
        tokens: list[int] = []
        probs: list[torch.Tensor] = []
        for _ in range(min(self.k, max_tokens)):
            logits = self._session.logits_from(draft, len(draft) - 1)[-1]
            self.calls += 1
            q = logits_to_probs(logits, self._request.sampling)
            token = int(sample(q, self._generator))
            tokens.append(token)
            probs.append(q)
            draft.append(token)
        return Proposal(tokens=tokens, probs=torch.stack(probs) if probs else None)
