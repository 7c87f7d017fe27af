"""A transformers tokenizer behind specbench's :class:`~specbench.models.base.Tokenizer`."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


class HFTokenizer:
    """Adapts a transformers tokenizer to specbench's :class:`~specbench.models.base.Tokenizer`."""

    def __init__(self, tokenizer: Any, extra_eos: Sequence[int] = ()) -> None:
        self.hf = tokenizer
        eos = set(extra_eos)
        if tokenizer.eos_token_id is not None:
            eos.add(int(tokenizer.eos_token_id))
        self._eos = frozenset(eos)

    @property
    def eos_token_ids(self) -> frozenset[int]:
        return self._eos

    def __len__(self) -> int:
        return len(self.hf)

    def encode(self, text: str) -> list[int]:
        return list(self.hf.encode(text, add_special_tokens=True))

    def decode(self, ids: Sequence[int]) -> str:
        return str(self.hf.decode(list(ids), skip_special_tokens=True))

    def chat_ids(self, messages: list[dict[str, str]]) -> list[int] | None:
        if not getattr(self.hf, "chat_template", None):
            return None
        encoded = self.hf.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
        if hasattr(encoded, "keys"):  # newer transformers return a BatchEncoding
            encoded = encoded["input_ids"]
        return [int(i) for i in encoded]

    def get_vocab(self) -> dict[str, int]:
        return dict(self.hf.get_vocab())

    def special_tokens(self) -> dict[str, str | None]:
        return {
            role: getattr(self.hf, f"{role}_token", None) for role in ("bos", "eos", "pad", "unk")
        }
