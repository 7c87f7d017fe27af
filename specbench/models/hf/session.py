"""KV-cache sessions of a transformers model: one sequence (chains and trees), or a batch.

A session owns one ``DynamicCache``; :meth:`HFSession._truncate` crops it after a rejection,
so every forward call processes only tokens the cache does not hold yet.
"""

from __future__ import annotations

import copy
import inspect
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch

from specbench.models import ledger
from specbench.models.base import (
    BatchSession,
    ForwardOutput,
    Session,
    common_prefix,
)
from specbench.models.hf.library import require_transformers

if TYPE_CHECKING:
    from specbench.models.hf.model import HFLanguageModel


class HFSession(Session):
    model: HFLanguageModel

    def __init__(self, model: HFLanguageModel) -> None:
        super().__init__(model)
        self.cache = _new_cache(model.model)

    def _append(self, tokens: list[int], n_logits: int, hidden: bool) -> ForwardOutput:
        hf = self.model
        ids = torch.tensor([tokens], dtype=torch.long, device=hf.device)
        with hf.no_grad():
            out = hf.model(
                input_ids=ids,
                **{hf.cache_argument: self.cache},
                use_cache=True,
                logits_to_keep=n_logits,
                output_hidden_states=hidden,
            )
        logits: torch.Tensor = out.logits[0, -n_logits:, : hf.vocab_size]
        states = out.hidden_states[-1][0, -n_logits:].float() if hidden else None
        return ForwardOutput(logits.float(), states)

    def _adopt_prompt_cache(self, prefix: list[int]) -> None:
        hf = self.model
        stored = hf.prompt_caches.get(tuple(prefix))
        if stored is None:
            builder = HFSession(hf)
            builder._append(prefix, 1, False)
            stored = builder.cache
            hf.prompt_caches.clear()  # one prompt at a time: bounded memory
            hf.prompt_caches[tuple(prefix)] = stored
        self.cache = copy.deepcopy(stored)
        self.cached = list(prefix)

    def _truncate(self, length: int) -> None:
        remove = self.cache.get_seq_length() - length
        if remove > 0:
            # Negative = number of positions to drop; understood by old and new transformers.
            self.cache.crop(-remove)

    def _append_tree(
        self, chain: list[int], parents: list[int], tokens: list[int], depths: list[int]
    ) -> torch.Tensor:
        hf = self.model
        visible, positions = self._tree_layout(chain, parents, tokens, depths)
        rows = visible.shape[0]
        allowed = torch.cat([torch.ones(rows, len(self.cached), dtype=torch.bool), visible], 1)
        dtype = hf.model.dtype
        mask = torch.zeros(1, 1, *allowed.shape, dtype=dtype)
        mask.masked_fill_(~allowed, torch.finfo(dtype).min)
        keep = len(tokens) + (1 if chain else 0)
        with hf.no_grad():
            out = hf.model(
                input_ids=torch.tensor([chain + tokens], dtype=torch.long, device=hf.device),
                position_ids=torch.tensor([positions], dtype=torch.long, device=hf.device),
                attention_mask=mask.to(hf.device),
                **{hf.cache_argument: self.cache},
                use_cache=True,
                logits_to_keep=keep,
            )
        logits: torch.Tensor = out.logits[0, -keep:, : hf.vocab_size]
        return logits.float()

    def commit_tree_path(self, path: Sequence[int]) -> None:
        """Batch-invariant models recompute the accepted path instead of keeping the tree's
        keys and values: a tree row attends to its ancestors *between* masked siblings, so a
        blocked GEMM groups (and rounds) its sums unlike a contiguous prefix, and in bfloat16
        such a cache drifts from one built token by token. The next call then processes the
        path as ordinary tokens (a few more rows), exactly as decoding would have."""
        if self.model.info.get("batch_invariant"):
            self._keep_tree_nodes([])
            self.tree = []
            return
        super().commit_tree_path(path)

    def _keep_tree_nodes(self, nodes: list[int]) -> None:
        base = len(self.cached)
        index = torch.tensor(
            list(range(base)) + [base + n for n in nodes],
            dtype=torch.long,
            device=self.model.device,
        )
        select_cache_positions(self.cache, index)


class HFBatchSession(BatchSession):
    """Rows of one batch in one ``DynamicCache``, each with its own length.

    Rows grow at different rates (each accepts its own number of drafts), so the cache is
    shared and every slot is marked valid or not per row: a rejected draft's slot simply
    becomes invalid (masked out for later queries) instead of being cropped, new tokens go
    into fresh slots at the end, and each row's positions count only its valid tokens.
    """

    def __init__(self, model: HFLanguageModel, size: int) -> None:
        super().__init__(model, size)
        self.hf = model
        self.cache = _new_cache(model.model)
        self.valid = torch.zeros(size, 0, dtype=torch.bool)
        self.slots: list[list[int]] = [[] for _ in range(size)]  # slot of each cached token

    def forward_rows(
        self,
        sequences: Sequence[Sequence[int] | None],
        starts: Sequence[int],
        hidden: bool = False,
    ) -> list[ForwardOutput | None]:
        new_tokens: list[list[int]] = []
        for row, (sequence, start) in enumerate(zip(sequences, starts, strict=True)):
            if sequence is None:
                new_tokens.append([])
                continue
            keep = min(common_prefix(self.cached[row], sequence), start)
            for slot in self.slots[row][keep:]:
                self.valid[row, slot] = False
            del self.slots[row][keep:]
            del self.cached[row][keep:]
            new_tokens.append(list(sequence[keep:]))
        width = max(len(tokens) for tokens in new_tokens)
        if width == 0:
            return [None] * self.size
        old = self.valid.shape[1]
        pad = self.hf.tokenizer.hf.pad_token_id or 0
        ids = torch.full((self.size, width), pad, dtype=torch.long)
        positions = torch.zeros((self.size, width), dtype=torch.long)
        new_valid = torch.zeros((self.size, width), dtype=torch.bool)
        for row, tokens in enumerate(new_tokens):
            n = len(tokens)
            if n:
                ids[row, :n] = torch.tensor(tokens)
                positions[row, :n] = torch.arange(len(self.cached[row]), len(self.cached[row]) + n)
                new_valid[row, :n] = True
        # Row b, query i sees its valid old slots and its own new tokens up to i; padding
        # queries see only themselves (a row of -inf would give NaNs).
        causal = torch.tril(torch.ones(width, width, dtype=torch.bool))
        allowed_new = causal & (new_valid.unsqueeze(1) | torch.eye(width, dtype=torch.bool))
        allowed_new &= new_valid.unsqueeze(2) | torch.eye(width, dtype=torch.bool)
        allowed_old = self.valid.unsqueeze(1).expand(self.size, width, old) & new_valid.unsqueeze(2)
        allowed = torch.cat([allowed_old, allowed_new], dim=2)
        dtype = self.hf.model.dtype
        mask = torch.zeros(self.size, 1, width, old + width, dtype=dtype)
        mask.masked_fill_(~allowed.unsqueeze(1), torch.finfo(dtype).min)
        device = self.hf.device
        rows = sum(len(tokens) for tokens in new_tokens)
        with self.hf.no_grad(), ledger.forward(self.hf, rows):
            out = self.hf.model(
                input_ids=ids.to(device),
                position_ids=positions.to(device),
                attention_mask=mask.to(device),
                **{self.hf.cache_argument: self.cache},
                use_cache=True,
                output_hidden_states=hidden,
            )
        self.valid = torch.cat([self.valid, new_valid], dim=1)
        logits = out.logits[..., : self.hf.vocab_size].float()
        states = out.hidden_states[-1].float() if hidden else None
        results: list[ForwardOutput | None] = []
        for row, (sequence, start) in enumerate(zip(sequences, starts, strict=True)):
            tokens = new_tokens[row]
            if sequence is None:
                results.append(None)
                continue
            first_new = len(sequence) - len(tokens)
            kept = slice(start - first_new, len(tokens))
            results.append(
                ForwardOutput(logits[row, kept], None if states is None else states[row, kept])
            )
            self.slots[row] += list(range(old, old + len(tokens)))
            self.cached[row] += tokens
        counters = self.hf.counters
        counters.forward_calls += 1
        counters.tokens_processed += sum(len(t) for t in new_tokens)
        return results


def select_cache_positions(cache: Any, index: torch.Tensor) -> None:
    """Keep only the sequence positions ``index`` of every layer of a ``DynamicCache``."""
    layers = getattr(cache, "layers", None)
    if layers is not None:
        for layer in layers:
            if getattr(layer, "keys", None) is not None and layer.keys.numel():
                layer.keys = layer.keys.index_select(-2, index)
                layer.values = layer.values.index_select(-2, index)
        return
    for i in range(len(cache.key_cache)):  # transformers < 4.56
        cache.key_cache[i] = cache.key_cache[i].index_select(-2, index)
        cache.value_cache[i] = cache.value_cache[i].index_select(-2, index)


def cache_argument(model: Any) -> str:
    """The name under which ``model``'s forward takes a KV cache."""
    parameters = inspect.signature(model.forward).parameters
    return "cache" if "cache" in parameters else "past_key_values"


def _new_cache(model: Any) -> Any:
    transformers = require_transformers()
    try:
        return transformers.DynamicCache(config=model.config)
    except TypeError:  # transformers < 4.56 takes no config
        return transformers.DynamicCache()
