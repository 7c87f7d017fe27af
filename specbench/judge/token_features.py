"""What a mismatch's two tokens look like: cheap features a judge adds to the hidden states.

Hidden states carry what the models know, but a judge trained on a few hundred mismatches
cannot learn from thousands of dimensions what a few plain traits say directly: a swapped
digit almost always changes a GSM8K answer, a swapped function word rarely does, and a
mismatch in the first tokens sends the whole answer down another path. Each mismatch gets
the traits of the draft's token and of the target's, how the two relate, and its position
in the response. Mining (training) and the verifier (decoding) both call
:meth:`TokenFeaturizer.features`, so the judge sees the same columns in both.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch

MATH_SYMBOLS = frozenset("+-*/=\u00d7\u00f7^%$().,:\\{}[]<>")  # with the times and divide signs
TOKEN_TRAITS = (
    "has_digit",
    "blank",
    "has_newline",
    "word",
    "math_symbol",
    "leading_space",
)
PAIR_TRAITS = ("both_have_digits", "same_when_normalised", "one_extends_other", "log_position")
FEATURE_NAMES = (
    *(f"draft_{t}" for t in TOKEN_TRAITS),
    *(f"target_{t}" for t in TOKEN_TRAITS),
    *PAIR_TRAITS,
)


def _traits(text: str) -> tuple[float, ...]:
    stripped = text.strip()
    return (
        float(any(c.isdigit() for c in text)),
        float(not stripped),
        float("\n" in text),
        float(stripped.isalpha()),
        float(bool(stripped) and all(c in MATH_SYMBOLS for c in stripped)),
        float(text[:1].isspace()),
    )


class TokenFeaturizer:
    """Maps (draft token, target token, response position) triples to feature rows."""

    width = len(FEATURE_NAMES)

    def __init__(self, decode: Callable[[list[int]], str]) -> None:
        self._decode = decode
        self._texts: dict[int, str] = {}

    def _text(self, token: int) -> str:
        if token not in self._texts:
            self._texts[token] = self._decode([token])
        return self._texts[token]

    def row(self, draft_token: int, target_token: int, position: int) -> list[float]:
        draft, target = self._text(draft_token), self._text(target_token)
        a, b = draft.strip().lower(), target.strip().lower()
        pair = (
            float(any(c.isdigit() for c in draft) and any(c.isdigit() for c in target)),
            float(a == b),
            float(bool(a) and bool(b) and (a.startswith(b) or b.startswith(a))),
            math.log1p(max(position, 0)),
        )
        return [*_traits(draft), *_traits(target), *pair]

    def features(
        self,
        draft_tokens: Sequence[int] | torch.Tensor,
        target_tokens: Sequence[int] | torch.Tensor,
        positions: Sequence[int] | torch.Tensor,
    ) -> torch.Tensor:
        """``[N, width]`` float32 rows, one per mismatch."""
        rows = [
            self.row(int(d), int(t), int(p))
            for d, t, p in zip(
                _ints(draft_tokens), _ints(target_tokens), _ints(positions), strict=True
            )
        ]
        return torch.tensor(rows, dtype=torch.float32).reshape(len(rows), self.width)


def _ints(values: Sequence[int] | torch.Tensor) -> list[int]:
    if isinstance(values, torch.Tensor):
        return [int(v) for v in values.flatten().tolist()]
    return [int(v) for v in values]
