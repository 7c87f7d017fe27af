"""The one logits-processing path: logits to the probabilities a token is drawn from.

Exact speculative sampling needs ``q`` to be *exactly* the distribution the draft token was
drawn from and ``p`` to be exactly the target's, after every transform. Both therefore go
through :func:`logits_to_probs` with the same :class:`SamplingParams`. Temperature 0 gives a
one-hot argmax, which turns the rejection verifier into greedy verification.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class SamplingParams:
    """Temperature, top-k and top-p, applied in that order (as Hugging Face does)."""

    temperature: float = 0.0
    top_k: int | None = None
    top_p: float = 1.0

    def __post_init__(self) -> None:
        if self.temperature < 0:
            raise ValueError("temperature must be >= 0")
        if self.top_k is not None and self.top_k < 1:
            raise ValueError("top_k must be >= 1")
        if not 0 < self.top_p <= 1:
            raise ValueError("top_p must be in (0, 1]")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0


def logits_to_probs(logits: torch.Tensor, params: SamplingParams) -> torch.Tensor:
    """Probabilities over the last dimension of ``logits`` (float32, any leading shape)."""
    logits = logits.float()
    if params.greedy:
        return one_hot(logits.argmax(dim=-1), logits.shape[-1])
    scaled = logits / params.temperature
    if params.top_k is not None and params.top_k < scaled.shape[-1]:
        kth_largest = torch.topk(scaled, params.top_k, dim=-1).values[..., -1:]
        scaled = scaled.masked_fill(scaled < kth_largest, float("-inf"))
    if params.top_p < 1.0:
        sorted_logits, order = torch.sort(scaled, dim=-1, descending=True)
        sorted_probs = torch.softmax(sorted_logits, dim=-1)
        # Keep the smallest prefix whose mass reaches top_p: drop a token once the mass
        # before it already does. The most likely token always survives.
        mass_before = torch.cumsum(sorted_probs, dim=-1) - sorted_probs
        drop_sorted = mass_before >= params.top_p
        drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
        scaled = scaled.masked_fill(drop, float("-inf"))
    return torch.softmax(scaled, dim=-1)


def one_hot(tokens: torch.Tensor, vocab_size: int) -> torch.Tensor:
    """Float one-hot distributions for integer ``tokens`` (a deterministic draft's ``q``)."""
    return torch.nn.functional.one_hot(tokens.long(), vocab_size).float()


def sample(probs: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """One token per row of ``probs`` (shape ``[..., V]``), returned with shape ``[...]``."""
    flat = probs.reshape(-1, probs.shape[-1])
    tokens = torch.multinomial(flat, 1, generator=generator)
    return tokens.reshape(probs.shape[:-1])
