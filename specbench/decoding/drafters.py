"""Drafters propose tokens for the target to verify.

A drafter is told the committed sequence and how many tokens it may propose at most; it
returns the tokens and, when it drew them at random, the distributions it drew them from.
After verification it hears how many were accepted, so it can adapt (as Hugging Face's
candidate generators do). Draft model, n-gram lookup and trees are all drafters; the loop and
the verifier stay the same.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from specbench.decoding.greedy import greedy_applies, greedy_token
from specbench.decoding.sampling import logits_to_probs, one_hot, sample
from specbench.decoding.types import GenerationRequest
from specbench.models.base import LanguageModel, Session


@dataclass
class Proposal:
    """Draft tokens and ``probs`` (``[k, V]``), the distributions they were drawn from.

    ``probs`` is ``None`` for a deterministic drafter; the verifier then uses one-hot rows,
    which is exact: the draft distribution of a deterministic proposal is a point mass.
    ``hidden[i]`` is the draft's last hidden state at draft token ``i`` (drafters asked to
    collect it). The state at the last token costs one more draft forward, so a drafter may
    leave it out of ``hidden`` and hand over ``last_hidden``, which computes it on demand.
    """

    tokens: list[int]
    probs: torch.Tensor | None = None
    hidden: torch.Tensor | None = None
    last_hidden: Callable[[], torch.Tensor] | None = None

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

    #: Set by drafters that read the target's last hidden state (trained heads): the loop
    #: then asks the verification call for it and hands over the committed position's row.
    wants_target_hidden: bool = False

    def observe(self, proposed: int, accepted: int) -> None:  # noqa: B027 - optional hook
        """Hear how a proposal fared; the default ignores it."""

    def observe_target_hidden(self, hidden: torch.Tensor) -> None:  # noqa: B027 - optional hook
        """The target's last hidden state at the position whose logits gave the token just
        committed (only for drafters with ``wants_target_hidden``): the verification call
        computed it already, so heads need no target call of their own."""


class NoDrafter(Drafter):
    """Proposes nothing: the speculative loop then decodes one target token per call."""

    def propose(self, sequence: Sequence[int], max_tokens: int) -> Proposal:
        return Proposal(tokens=[])


class ModelDrafter(Drafter):
    """Samples ``k`` tokens autoregressively from a draft model, keeping its KV cache.

    Tokens are drawn through the same logits processing as the target's, so ``q`` is exactly
    the distribution each draft token came from. With ``collect_hidden`` the proposal carries
    the draft's states at its tokens; the one at the last token is left to ``last_hidden``.
    """

    def __init__(self, model: LanguageModel, k: int, collect_hidden: bool = False) -> None:
        super().__init__()
        self.model = model
        self.k = k
        self.collect_hidden = collect_hidden
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
        hidden: list[torch.Tensor] = []
        for _ in range(min(self.k, max_tokens)):
            output = self._session.forward_from(draft, len(draft) - 1, hidden=self.collect_hidden)
            self.calls += 1
            if tokens and output.hidden is not None:
                hidden.append(output.hidden[-1])  # the state at the previous draft token
            if greedy_applies(self._request.sampling):
                # Deterministic at temperature 0: the argmax, with no distribution (one-hot
                # rows are implied and exact).
                token = int(greedy_token(output.logits[-1]))
            else:
                q = logits_to_probs(output.logits[-1], self._request.sampling)
                token = int(sample(q, self._generator))
                probs.append(q)
            tokens.append(token)
            draft.append(token)
        return Proposal(
            tokens=tokens,
            probs=torch.stack(probs) if probs else None,
            hidden=torch.stack(hidden) if hidden else None,
            last_hidden=self._last_hidden(draft) if self.collect_hidden and tokens else None,
        )

    def _last_hidden(self, draft: list[int]) -> Callable[[], torch.Tensor]:
        """The state at the last draft token: one more forward, made only when a verifier
        asks (a judge scoring a mismatch there), since most steps reject earlier."""
        session = self._session
        assert session is not None

        def compute() -> torch.Tensor:
            output = session.forward_from(draft, len(draft) - 1, hidden=True)
            self.calls += 1
            assert output.hidden is not None
            return output.hidden[-1]

        return compute


class NgramDrafter(Drafter):
    """Prompt lookup: continue the latest earlier occurrence of the sequence's last n-gram.

    Tries ``n = max_ngram`` down to ``min_ngram``; the match may lie in the prompt or in the
    output so far. The proposal is deterministic, so its ``q`` is one-hot and the shared
    verifier stays exact at any temperature (Saxena's prompt lookup decoding; HF's
    ``prompt_lookup_num_tokens``).
    """

    def __init__(self, k: int, max_ngram: int = 3, min_ngram: int = 1) -> None:
        super().__init__()
        self.k = k
        self.max_ngram = max_ngram
        self.min_ngram = min_ngram
        self.lookups = 0
        self.hits = 0

    def start(self, request: GenerationRequest) -> None:
        super().start(request)
        self.lookups = 0
        self.hits = 0

    def propose(self, sequence: Sequence[int], max_tokens: int) -> Proposal:
        limit = min(self.k, max_tokens)
        if limit <= 0:
            return Proposal(tokens=[])
        tokens = lookup_continuation(sequence, limit, self.max_ngram, self.min_ngram)
        self.lookups += 1
        self.hits += bool(tokens)
        return Proposal(tokens=tokens)


def lookup_continuation(
    sequence: Sequence[int], limit: int, max_ngram: int, min_ngram: int
) -> list[int]:
    """Up to ``limit`` tokens that followed the latest earlier match of the last n-gram."""
    length = len(sequence)
    for n in range(min(max_ngram, length - 1), min_ngram - 1, -1):
        tail = list(sequence[length - n :])
        # Latest match first; a match must end before the tail itself starts.
        for start in range(length - n - 1, -1, -1):
            if list(sequence[start : start + n]) == tail:
                follow = list(sequence[start + n : start + n + limit])
                if follow:
                    return follow
    return []
