"""Can a draft speculate for a target? Compare their tokenizers.

Speculative decoding exchanges token ids between the two models, so their token-to-id maps
and special tokens must agree. Embedding matrices padded to different sizes are fine: the
loader masks logits beyond the shared vocabulary.
"""

from __future__ import annotations

from dataclasses import dataclass

from specbench.models.base import Tokenizer

EXAMPLES = 5


@dataclass(frozen=True)
class TokenizerMismatch:
    """How two tokenizers differ."""

    differing: int
    total: int
    examples: list[str]
    special: list[str]

    def describe(self) -> str:
        parts = []
        if self.differing:
            parts.append(
                f"{self.differing} of {self.total} vocabulary entries differ "
                f"(first: {', '.join(self.examples)})"
            )
        if self.special:
            parts.append(f"special tokens differ: {', '.join(self.special)}")
        return "; ".join(parts)


def compare_tokenizers(target: Tokenizer, draft: Tokenizer) -> TokenizerMismatch | None:
    """``None`` when the draft's ids mean the same tokens as the target's."""
    target_vocab, draft_vocab = target.get_vocab(), draft.get_vocab()
    missing = 1 << 62

    def order(token: str) -> tuple[int, int, str]:
        # By target id, then draft id, then text: the same examples on every run (a set's
        # order of strings changes with the interpreter's hash seed).
        return (target_vocab.get(token, missing), draft_vocab.get(token, missing), token)

    keys = sorted(set(target_vocab) | set(draft_vocab), key=order)
    differing = [t for t in keys if target_vocab.get(t) != draft_vocab.get(t)]
    examples = [
        f"{t!r} is {_id(target_vocab.get(t))} in the target, {_id(draft_vocab.get(t))} in the draft"
        for t in differing[:EXAMPLES]
    ]
    target_special, draft_special = target.special_tokens(), draft.special_tokens()
    special = [
        f"{role}: target {target_special.get(role)!r}, draft {draft_special.get(role)!r}"
        for role in sorted(set(target_special) | set(draft_special))
        if target_special.get(role) != draft_special.get(role)
    ]
    if not differing and not special:
        return None
    return TokenizerMismatch(len(differing), len(keys), examples, special)


def _id(value: int | None) -> str:
    return "missing" if value is None else f"id {value}"
