"""What attention derives from a forward's additive mask, computed once per forward call.

A forward passes one mask object to every layer, so a value derived from it (which keys each
query sees, a gather layout) is worth computing once per call: :class:`PerMask` keeps the
last mask's value, keyed by the object (a weak reference) and the key count.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable
from typing import Generic, TypeVar

import torch

T = TypeVar("T")


class PerMask(Generic[T]):
    """``compute(mask, length)``, remembered for the last mask and key count seen."""

    def __init__(self, compute: Callable[[torch.Tensor, int], T]) -> None:
        self.compute = compute
        self._last: tuple[weakref.ref[torch.Tensor], int, T] | None = None

    def __call__(self, attention_mask: torch.Tensor, length: int) -> T:
        last = self._last
        if last is not None and last[0]() is attention_mask and last[1] == length:
            return last[2]
        value = self.compute(attention_mask, length)
        self._last = (weakref.ref(attention_mask), length, value)
        return value


def _visible(attention_mask: torch.Tensor, length: int) -> torch.Tensor:
    return attention_mask[:, 0, :, :length] == 0  # the mask is shared by the heads


#: ``[B, M, L]``: which of the first ``length`` keys each query sees (additive mask zeros).
visible_keys: PerMask[torch.Tensor] = PerMask(_visible)
