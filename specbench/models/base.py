"""The model interface decoding methods work against.

A :class:`LanguageModel` hands out :class:`Session` objects. A session caches what it has
processed (for a transformer, its KV cache) and is told which token sequence it should now
extend; it keeps the longest prefix it already has and processes only the rest. Rolling back
after a rejected draft is therefore implicit: ask for logits of the accepted sequence and the
session truncates its cache to the common prefix. No step re-encodes what is already cached.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch


class Tokenizer(Protocol):
    """The little a method or the runner needs from a tokenizer."""

    @property
    def eos_token_ids(self) -> frozenset[int]:
        """Token ids that end a generation."""
        ...

    def encode(self, text: str) -> list[int]:
        """Plain text to ids (with the special tokens the tokenizer adds by default)."""
        ...

    def decode(self, ids: Sequence[int]) -> str:
        """Ids to text, special tokens skipped."""
        ...

    def chat_ids(self, messages: list[dict[str, str]]) -> list[int] | None:
        """Ids of ``messages`` through the chat template, ready for the assistant's turn;
        ``None`` when the tokenizer has no chat template."""
        ...

    def get_vocab(self) -> dict[str, int]:
        """Token to id, for compatibility checks between a target and a draft."""
        ...

    def special_tokens(self) -> dict[str, str | None]:
        """Role (bos, eos, pad, unk) to token text."""
        ...


@dataclass
class ModelCounters:
    """What a model has done since it was loaded: forward calls and tokens processed."""

    forward_calls: int = 0
    tokens_processed: int = 0

    def reset(self) -> None:
        self.forward_calls = 0
        self.tokens_processed = 0


class LanguageModel(ABC):
    """A causal language model that decodes through sessions.

    ``vocab_size`` is the number of logits every call returns. Target and draft of a pair
    must return the same number; the loader trims padded embedding rows to the shared size.
    """

    name: str
    vocab_size: int
    tokenizer: Tokenizer
    device: torch.device

    def __init__(self) -> None:
        self.counters = ModelCounters()

    @abstractmethod
    def new_session(self) -> Session:
        """A fresh, empty cache for one sequence."""

    def restrict_vocab(self, size: int) -> None:
        """Return logits for the first ``size`` ids only (the vocabulary shared with a draft)."""
        if size != self.vocab_size:
            raise ValueError(f"{self.name} cannot restrict its vocabulary to {size}")

    def synchronize(self) -> None:
        """Wait for queued device work, so wall-clock timings are honest."""
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def describe(self) -> dict[str, Any]:
        """What the run header records about this model."""
        return {"name": self.name, "vocab_size": self.vocab_size, "device": str(self.device)}


@dataclass
class Session(ABC):
    """One sequence's cache in one model.

    Subclasses implement :meth:`_append` (process tokens after the cached ones and return
    their next-token logits) and :meth:`_truncate` (drop cached positions from the end).
    """

    model: LanguageModel
    cached: list[int] = field(default_factory=list)

    def logits_from(self, tokens: Sequence[int], start: int) -> torch.Tensor:
        """Next-token logits for positions ``start .. len(tokens) - 1`` of ``tokens``.

        Row ``i`` is the model's distribution for the token that follows
        ``tokens[: start + i + 1]``. Returns a float tensor of shape
        ``[len(tokens) - start, vocab_size]``. Cached positions that still agree with
        ``tokens`` are reused; positions from the first disagreement on are dropped.
        """
        if not 0 <= start < len(tokens):
            raise ValueError(f"start={start} outside a sequence of {len(tokens)} tokens")
        keep = min(_common_prefix(self.cached, tokens), start)
        if keep < len(self.cached):
            self._truncate(keep)
            del self.cached[keep:]
        new = list(tokens[keep:])
        logits = self._append(new, len(tokens) - start)
        self.cached.extend(new)
        counters = self.model.counters
        counters.forward_calls += 1
        counters.tokens_processed += len(new)
        return logits

    @abstractmethod
    def _append(self, tokens: list[int], n_logits: int) -> torch.Tensor:
        """Process ``tokens`` after the cache; return the logits of the last ``n_logits``
        positions, shape ``[n_logits, vocab_size]`` (float32). Skipping the others matters:
        the output projection of a long prompt is a large share of a prefill."""

    @abstractmethod
    def _truncate(self, length: int) -> None:
        """Keep only the first ``length`` cached positions."""


def _common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    n = min(len(a), len(b))
    for i in range(n):
        if a[i] != b[i]:
            return i
    return n
