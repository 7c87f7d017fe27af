"""Analytic toy language models whose next-token distributions are known exactly.

A toy model is an order-``n`` Markov chain over a small vocabulary: a seeded random table of
logits indexed by the last ``n`` tokens. A draft is the same table plus seeded noise scaled by
``distance``, so ``distance = 0`` is a perfect draft and larger values drift away from the
target. Both are instant on a CPU, and :meth:`ToyLanguageModel.next_logits` gives the exact
distribution any test wants to compare samples against. An optional simulated cost per forward
call and per token makes wall-clock speedups behave like those of real models.
"""

from __future__ import annotations

import string
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch

from specbench.models import ledger
from specbench.models.base import (
    BatchSession,
    ForwardOutput,
    LanguageModel,
    SequentialBatchSession,
    Session,
    tree_path,
)

EOS_ID = 0
UNK_ID = 1
_ALPHABET = string.ascii_lowercase + " .,!?'\n" + string.digits + string.ascii_uppercase
_MAX_TABLE_ROWS = 1 << 20


class ToyTokenizer:
    """Character-level tokenizer: id 0 is end-of-sequence, id 1 unknown, then characters."""

    def __init__(self, vocab_size: int) -> None:
        self.vocab_size = vocab_size
        chars = _ALPHABET[: max(0, vocab_size - 2)]
        self._to_id = {c: i + 2 for i, c in enumerate(chars)}
        self._to_char = {i + 2: c for i, c in enumerate(chars)}

    @property
    def eos_token_ids(self) -> frozenset[int]:
        return frozenset({EOS_ID})

    def encode(self, text: str) -> list[int]:
        return [self._to_id.get(c, UNK_ID) for c in text]

    def decode(self, ids: Sequence[int]) -> str:
        special = {EOS_ID: "", UNK_ID: "\N{REPLACEMENT CHARACTER}"}
        return "".join(special.get(i) or self._to_char.get(i, f"<{i}>") for i in ids)

    def chat_ids(self, messages: list[dict[str, str]]) -> list[int] | None:
        return None  # toy models have no chat template

    def get_vocab(self) -> dict[str, int]:
        vocab = {"<eos>": EOS_ID, "<unk>": UNK_ID, **self._to_id}
        vocab.update({f"<{i}>": i for i in range(len(vocab), self.vocab_size)})
        return vocab

    def special_tokens(self) -> dict[str, str | None]:
        return {"eos": "<eos>", "unk": "<unk>"}


@dataclass(frozen=True)
class ToyConfig:
    """Everything that determines a toy model; equal configs give identical models."""

    vocab_size: int = 48
    order: int = 1
    seed: int = 0
    sharpness: float = 2.0
    distance: float = 0.0
    noise_seed: int = 1
    eos_bias: float | None = None
    forward_ms: float = 0.0
    token_ms: float = 0.0


class ToyLanguageModel(LanguageModel):
    """An order-``n`` Markov chain with a seeded logits table (see module docstring)."""

    def __init__(self, config: ToyConfig, name: str = "toy") -> None:
        super().__init__()
        rows = config.vocab_size**config.order
        if rows > _MAX_TABLE_ROWS:
            raise ValueError(
                f"toy table of vocab_size**order = {rows} rows is too large; "
                "lower vocab_size or order"
            )
        self.config = config
        self.name = name
        self.vocab_size = config.vocab_size
        self.tokenizer = ToyTokenizer(config.vocab_size)
        self.device = torch.device("cpu")
        table = config.sharpness * torch.randn(
            rows, config.vocab_size, generator=torch.Generator().manual_seed(config.seed)
        )
        if config.distance:
            noise = torch.randn(
                rows, config.vocab_size, generator=torch.Generator().manual_seed(config.noise_seed)
            )
            table += config.distance * noise
        if config.eos_bias is None:
            table[:, EOS_ID] = float("-inf")
        else:
            table[:, EOS_ID] += config.eos_bias
        self.table = table

    def context_index(self, tokens: Sequence[int], end: int | None = None) -> int:
        """Row of the logits table used after ``tokens[:end]`` (short prefixes pad with EOS)."""
        end = len(tokens) if end is None else end
        index = 0
        for offset in range(1, self.config.order + 1):
            token = tokens[end - offset] if offset <= end else EOS_ID
            index = index * self.vocab_size + token
        return index

    def next_logits(self, prefix: Sequence[int]) -> torch.Tensor:
        """Exact next-token logits after ``prefix``."""
        return self.table[self.context_index(prefix)]

    def hidden_states(self, tokens: Sequence[int], rows: Sequence[int]) -> torch.Tensor:
        """A toy "last hidden state" for the given table rows: the row's logits (which see the
        token at that position) followed by a one-hot of the position's own token."""
        del tokens
        logits = self.table[list(rows)].clone()
        logits[torch.isinf(logits)] = -30.0
        own = torch.zeros(len(rows), self.vocab_size)
        for i, row in enumerate(rows):
            own[i, row % self.vocab_size] = 1.0
        return torch.cat([logits, own], dim=-1)

    def new_session(self) -> Session:
        return ToySession(self)

    def new_batch_session(self, size: int) -> BatchSession:
        return ToyBatchSession(self, size)

    def simulate_cost(self, tokens: int) -> None:
        """Sleep for one forward call over ``tokens`` new tokens (``forward_ms``, ``token_ms``)."""
        cost_ms = self.config.forward_ms + self.config.token_ms * tokens
        if cost_ms > 0 and self.simulate_costs:
            time.sleep(cost_ms / 1000)

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "backend": "toy", **asdict(self.config)}


class ToySession(Session):
    model: ToyLanguageModel

    def __init__(self, model: ToyLanguageModel, simulate_cost: bool = True) -> None:
        super().__init__(model)
        self.simulate_cost = simulate_cost
        self.timed = simulate_cost  # rows of a batch session: the batch call is timed

    def _append(self, tokens: list[int], n_logits: int, hidden: bool) -> ForwardOutput:
        model = self.model
        full = self.cached + tokens
        end = len(full)
        rows = [model.context_index(full, end - n_logits + i + 1) for i in range(n_logits)]
        if self.simulate_cost:
            model.simulate_cost(len(tokens))
        logits = model.table[rows]
        return ForwardOutput(logits, model.hidden_states(full, rows) if hidden else None)

    def _truncate(self, length: int) -> None:
        # Nothing is cached beyond the token list the base class keeps.
        pass

    def _append_tree(
        self, chain: list[int], parents: list[int], tokens: list[int], depths: list[int]
    ) -> torch.Tensor:
        model = self.model
        base = self.cached + chain
        rows = [model.context_index(base)] if chain else []
        all_parents, all_tokens = self._all_nodes(parents, tokens)
        offset = len(self.tree)
        for i in range(len(tokens)):
            rows.append(model.context_index(base + tree_path(offset + i, all_parents, all_tokens)))
        if self.simulate_cost:
            model.simulate_cost(len(chain) + len(tokens))
        return model.table[rows]

    def _keep_tree_nodes(self, nodes: list[int]) -> None:
        pass


class ToyBatchSession(SequentialBatchSession):
    """Rows computed one by one, but timed as one batched forward call, as on real hardware:
    the fixed cost ``forward_ms`` is paid once per call, ``token_ms`` per token of every row."""

    model: ToyLanguageModel

    def __init__(self, model: ToyLanguageModel, size: int) -> None:
        super().__init__(model, size, [ToySession(model, simulate_cost=False) for _ in range(size)])

    def forward_rows(
        self,
        sequences: Sequence[Sequence[int] | None],
        starts: Sequence[int],
        hidden: bool = False,
    ) -> list[ForwardOutput | None]:
        before = self.model.counters.tokens_processed
        out = super().forward_rows(sequences, starts, hidden)
        tokens = self.model.counters.tokens_processed - before
        with ledger.forward(self.model, tokens):
            self.model.simulate_cost(tokens)
        return out
