"""Hugging Face transformers backend: any causal LM, with its KV cache kept across steps.

A session owns one ``DynamicCache``; :meth:`HFSession._truncate` crops it after a rejection,
so every forward call processes only tokens the cache does not hold yet. Local folders,
catalogue names and hub ids all go through the same ``from_pretrained`` call.
"""

from __future__ import annotations

import contextlib
import copy
import importlib
import inspect
import sys
import warnings
import weakref
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import torch

from specbench.decoding import ledger
from specbench.errors import ModelLoadError
from specbench.install_hints import install_extra
from specbench.models.base import (
    BatchSession,
    Continuation,
    ForwardOutput,
    LanguageModel,
    Session,
    common_prefix,
)
from specbench.models.specs import (
    Bnb4BitSpec,
    Bnb8BitSpec,
    DummyModelSpec,
    HFModelSpec,
    QuantoSpec,
)

_DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}


def require_transformers() -> Any:
    """The transformers module, or a one-line error saying how to install it."""
    try:
        import transformers
    except ImportError as error:
        raise ModelLoadError(
            "the Hugging Face backend needs transformers, which is not installed",
            install_extra("hf"),
        ) from error
    return transformers


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


class HFLanguageModel(LanguageModel):
    """A loaded transformers causal LM behind specbench's session interface."""

    tokenizer: HFTokenizer

    def __init__(
        self,
        model: Any,
        tokenizer: HFTokenizer,
        name: str,
        info: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        self.model = model
        self.tokenizer = tokenizer
        self.name = name
        self.device = next(model.parameters()).device
        self.vocab_size = int(model.get_output_embeddings().weight.shape[0])
        self.info = info or {}
        self.prompt_caches: dict[tuple[int, ...], Any] = {}
        #: Free static decoders by (max_len, compile): one is in use per open static session.
        self._static_pools: dict[tuple[int, bool], list[Any]] = {}
        #: The forward's cache argument: ``cache`` since transformers 5.2x, before that
        #: ``past_key_values`` (the old name warns on every call where both exist).
        self.cache_argument = cache_argument(model)
        # optimum-quanto's packed int4 weights cannot run under inference_mode.
        quantized = (self.info.get("quantization") or {}).get("method")
        self.no_grad = torch.no_grad if quantized == "quanto" else torch.inference_mode

    def restrict_vocab(self, size: int) -> None:
        """Return logits for the first ``size`` ids only (padded embedding rows are masked)."""
        self.vocab_size = min(self.vocab_size, size)

    def new_session(self) -> Session:
        return HFSession(self)

    @contextlib.contextmanager
    def shipped_kernels(self) -> Iterator[None]:
        """transformers' own ``nn.Linear`` layers and the attention it would have chosen
        (``info["shipped_attention"]``) inside the block; specbench's back after it. The
        swap changes classes in place: no weight is copied."""
        swapped = [
            (module, type(module))
            for module in self.model.modules()
            if isinstance(module, torch.nn.Linear) and type(module) is not torch.nn.Linear
        ]
        attention = getattr(self.model.config, "_attn_implementation", None)
        shipped = self.info.get("shipped_attention") or attention
        for module, _ in swapped:
            module.__class__ = torch.nn.Linear
        if shipped != attention:
            self.model.set_attn_implementation(shipped)
        try:
            yield
        finally:
            for module, kind in swapped:
                module.__class__ = kind
            if shipped != attention:
                self.model.set_attn_implementation(attention)

    def new_static_session(
        self,
        positions: int,
        max_len: int,
        graph_lengths: tuple[int, ...] = (),
        compile: bool = False,
    ) -> Session:
        """A session in one of this model's static decoders (made once per setting and kept:
        a cache, its graphs and any compilation are made once per run, not per sequence)."""
        from specbench.models.static import StaticDecoder, StaticSession

        pool = self._static_pools.setdefault((max_len, compile), [])
        decoder = pool.pop() if pool else StaticDecoder(self, max_len, compile=compile)
        decoder.graph_lengths.update(graph_lengths)
        decoder.reserve(positions)
        return StaticSession(self, decoder, pool)

    def logits_of_states(self, states: torch.Tensor) -> torch.Tensor:
        """Raw logits ``[..., V]`` (float, on the CPU) for final normed hidden states."""
        head = self.model.get_output_embeddings()
        with self.no_grad():
            rows = states.reshape(-1, 1, states.shape[-1])  # [N, 1, H]: the layer's usual shape
            logits: torch.Tensor = head(rows.to(head.weight.device, head.weight.dtype))
        return logits[:, 0, : self.vocab_size].float().cpu().reshape(*states.shape[:-1], -1)

    def new_batch_session(self, size: int) -> BatchSession:
        return HFBatchSession(self, size)

    def greedy_continuations(
        self,
        prefixes: Sequence[Sequence[int]],
        max_new_tokens: int,
        stop_ids: frozenset[int],
        batch_size: int = 8,
    ) -> list[Continuation]:
        """Batched greedy continuations (left padding), the way label mining stays affordable."""
        pad = self.tokenizer.hf.pad_token_id
        if pad is None:
            pad = next(iter(stop_ids), 0)
        out: list[Continuation] = []
        for start in range(0, len(prefixes), batch_size):
            batch = [list(p) for p in prefixes[start : start + batch_size]]
            width = max(len(p) for p in batch)
            ids = torch.full((len(batch), width), pad, dtype=torch.long)
            mask = torch.zeros((len(batch), width), dtype=torch.long)
            for row, prefix in enumerate(batch):
                ids[row, width - len(prefix) :] = torch.tensor(prefix)
                mask[row, width - len(prefix) :] = 1
            with self.no_grad():
                generated = self.model.generate(
                    input_ids=ids.to(self.device),
                    attention_mask=mask.to(self.device),
                    max_new_tokens=max_new_tokens,
                    do_sample=False,
                    eos_token_id=sorted(stop_ids) or None,
                    pad_token_id=pad,
                    output_hidden_states=True,
                    return_dict_in_generate=True,
                )
            # The last layer's states are the final norm's output, what the output layer
            # reads: the state before the last prefix token gives the logits it came from.
            prefill = generated.hidden_states[0][-1]
            prefill_hidden = prefill[:, -1].float().cpu()
            before_last = self.logits_of_states(prefill[:, -2]) if width > 1 else None
            new = generated.sequences[:, width:].cpu()
            for row in range(len(batch)):
                tokens: list[int] = []
                for token in new[row].tolist():
                    tokens.append(token)
                    if token in stop_ids:
                        break
                out.append(
                    Continuation(
                        tokens,
                        prefill_hidden[row],
                        None if before_last is None or len(batch[row]) < 2 else before_last[row],
                    )
                )
        return out

    def describe(self) -> dict[str, Any]:
        parameters = sum(p.numel() for p in self.model.parameters())
        return {
            **super().describe(),
            "backend": "hf",
            "architecture": type(self.model).__name__,
            "parameters": parameters,
            "dtype": str(self.model.dtype).removeprefix("torch."),
            **self.info,
        }


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


class RowStableLinear(torch.nn.Linear):
    """``nn.Linear`` that runs a single row as two, so every row goes through the same GEMM.

    CPU and GPU libraries pick a different kernel (a GEMV) for one row than for several, and
    the two round differently. Scoring k + 1 draft positions in one call would then give
    slightly different logits than decoding them one at a time, and in bfloat16 a near-tie
    can flip a greedy choice. With every call on the multi-row kernel, whose result for a
    row does not depend on the other rows, they agree bit for bit.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.numel() == x.shape[-1]:  # a single row
            return super().forward(torch.cat([x, x], dim=-2))[..., :1, :]
        return super().forward(x)


#: The attention implementation batch-invariant models run (registered with transformers).
ROW_STABLE_ATTENTION = "specbench_row_stable_eager"


#: Model types whose eager attention is plain scaled dot-product attention over grouped
#: key/value heads (no soft-capping, sinks or extra terms), which :func:`grouped_attention`
#: computes without copying the keys and values per query head.
GROUPED_ATTENTION_TYPES = frozenset({"llama", "mistral", "qwen2", "qwen3"})


def row_stable_eager_attention(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    *args: Any,
    **kwargs: Any,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The model's eager attention, with every product on the multi-row kernel.

    The same trap as :class:`RowStableLinear`, in ``weights @ values``: for one query row the
    CPU library takes another path once the keys pass about 1152 (measured in bfloat16), so
    the token decoded alone at position ~1150 gets other logits than the same position
    scored among k + 1 (a near-tie there flipped a greedy choice in a 1536-token run). Several
    rows go through the multi-row kernel, which agrees with any number of rows: the query
    heads that share a key/value head are one product's rows (:func:`grouped_attention`,
    for the architectures it knows), and a single row left alone is run as two."""
    config = getattr(module, "config", None)
    if getattr(config, "model_type", None) in GROUPED_ATTENTION_TYPES:
        scaling = kwargs.get("scaling", args[0] if args else None)
        if scaling is not None and not module.training:
            return grouped_attention(query, key, value, attention_mask, float(scaling))
    eager = sys.modules[type(module).__module__].eager_attention_forward
    single = query.shape[-2] == 1
    if single:
        query = torch.cat([query, query], dim=-2)
        if attention_mask is not None and attention_mask.shape[-2] == 1:
            attention_mask = torch.cat([attention_mask, attention_mask], dim=-2)
    output, weights = eager(module, query, key, value, attention_mask, *args, **kwargs)
    if single:  # output [batch, rows, heads, dim], weights [batch, heads, rows, keys]
        output = output[:, :1]
        weights = None if weights is None else weights[..., :1, :]
    return output, weights


def grouped_attention(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Eager attention (``softmax(q k^T * scaling + mask) v``, softmax in float32, the
    order transformers' eager attention uses) with the query heads of each key/value head
    as the rows of one product, instead of copying the keys and values for every query
    head (transformers' ``repeat_kv``): on a CPU those copies cost more than the products.

    ``query`` ``[B, H, M, D]``, ``key``/``value`` ``[B, G, L, D]`` with ``H`` a multiple of
    ``G``; returns the output ``[B, M, H, D]`` and the weights ``[B, H, M, L]``.
    """
    batch, heads, rows, dim = query.shape
    groups = key.shape[1]
    per_group = heads // groups
    layout = _visible_layout(attention_mask, key.shape[-2])
    if layout is not None:
        return _gathered_attention(query, key, value, scaling, *layout)
    single = per_group * rows == 1
    if single:  # one row alone would take the one-row kernel: run it as two
        query = torch.cat([query, query], dim=-2)
        rows = 2
        if attention_mask is not None and attention_mask.shape[-2] == 1:
            attention_mask = torch.cat([attention_mask, attention_mask], dim=-2)
    length = key.shape[-2]
    grouped = query.reshape(batch, groups, per_group * rows, dim)
    scores = torch.matmul(grouped, key.transpose(2, 3)) * scaling
    if attention_mask is not None:
        mask = attention_mask[:, :, :, :length].unsqueeze(2)  # [B, 1, 1, M, L]
        scores = (scores.view(batch, groups, per_group, rows, length) + mask).view_as(scores)
    weights = torch.nn.functional.softmax(scores, dim=-1, dtype=torch.float32).to(query.dtype)
    output = torch.matmul(weights, value).view(batch, heads, rows, dim)
    weights = weights.view(batch, heads, rows, length)
    if single:
        output, weights = output[:, :, :1], weights[:, :, :1]
    return output.transpose(1, 2).contiguous(), weights


#: The layout of the last mask seen (a forward passes one mask to every layer): a weak
#: reference to it, and its gather indices (``None``: every row sees a prefix of the keys).
_LAST_LAYOUT: tuple[Any, tuple[torch.Tensor, torch.Tensor] | None] | None = None


def _visible_layout(
    attention_mask: torch.Tensor | None, length: int
) -> tuple[torch.Tensor, torch.Tensor] | None:
    """For a mask under which some row sees keys that are not the first ones in order (a
    token tree's nodes, with their siblings masked between them; padded rows of a batch):
    per row, the slots it sees in order padded to the longest (``[B, M, W]``) and the
    additive mask of the padding. ``None`` when every row sees a prefix ``[0, n)`` of the
    keys, as a decoding step does, and under graph capture or compilation (their steps are
    chains)."""
    global _LAST_LAYOUT
    if attention_mask is None or torch.compiler.is_compiling():
        return None
    if attention_mask.is_cuda and torch.cuda.is_current_stream_capturing():
        return None
    last = _LAST_LAYOUT
    if last is not None and last[0]() is attention_mask:
        return last[1]
    visible = attention_mask[:, 0, :, :length] == 0  # [B, M, L]; the mask is shared by heads
    counts = visible.sum(-1)
    prefixes = visible.to(torch.int8).cumprod(-1).sum(-1)
    layout = None
    if not bool((prefixes == counts).all()):  # some row sees keys out of order: gather
        width = int(counts.max())
        # Visible slots first, in order (a stable sort of "not visible"), then padding.
        order = torch.sort((~visible).to(torch.int8), dim=-1, stable=True).indices[..., :width]
        padding = torch.arange(width, device=counts.device) >= counts.unsqueeze(-1)
        fill = torch.zeros(padding.shape, dtype=attention_mask.dtype, device=counts.device)
        layout = (order, fill.masked_fill_(padding, torch.finfo(attention_mask.dtype).min))
    _LAST_LAYOUT = (weakref.ref(attention_mask), layout)
    return layout


def _gathered_attention(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    scaling: float,
    order: torch.Tensor,
    padding: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`grouped_attention` with each row's visible keys gathered into the order and
    places a decoding step has them (its earlier tokens, then itself, from slot 0): a
    product's result for a key depends on where the key lies in the reduction (SIMD lanes
    and pairs, blocks), so a tree node scored with its siblings masked between its ancestors
    got other logits than the same token decoded in turn (a bf16 near-tie flipped a greedy
    choice of SpecExec). Keys past a row's own are padding with zero weight at the end, which
    a decoding step's reduction does not see either (the chain case, checked)."""
    batch, heads, rows, dim = query.shape
    groups = key.shape[1]
    per_group = heads // groups
    width = order.shape[-1]
    scores = torch.matmul(query.reshape(batch, groups, per_group * rows, dim), key.transpose(2, 3))
    scores = (scores * scaling).view(batch, groups, per_group, rows, -1)
    index = order.view(batch, 1, 1, rows, width).expand(batch, groups, per_group, rows, width)
    gathered = torch.gather(scores, -1, index) + padding.view(batch, 1, 1, rows, width)
    weights = torch.nn.functional.softmax(gathered, dim=-1, dtype=torch.float32).to(query.dtype)
    # Each row's values in its own order: [B, G, M, W, D], one product per row and group,
    # whose rows are that group's query heads (as in a decoding step).
    picked = value[torch.arange(batch).view(batch, 1, 1), :, order]  # [B, M, W, G, D]
    picked = picked.permute(0, 3, 1, 2, 4)
    per_row = weights.permute(0, 1, 3, 2, 4)  # [B, G, M, per_group, W]
    if per_group == 1:  # one row alone would take the one-row kernel: run it as two
        output = torch.matmul(torch.cat([per_row, per_row], dim=-2), picked)[..., :1, :]
    else:
        output = torch.matmul(per_row, picked)  # [B, G, M, per_group, D]
    output = output.permute(0, 1, 3, 2, 4).reshape(batch, heads, rows, dim)
    full = torch.zeros(*scores.shape, dtype=weights.dtype, device=weights.device)
    full.scatter_(-1, index, weights)
    return output.transpose(1, 2).contiguous(), full.view(batch, heads, rows, -1)


def make_batch_invariant(model: torch.nn.Module) -> None:
    """Swap plain ``nn.Linear`` layers for :class:`RowStableLinear` in place (no copies) and
    run attention through :func:`row_stable_eager_attention`."""
    for module in model.modules():
        if type(module) is torch.nn.Linear:
            module.__class__ = RowStableLinear
    modeling = sys.modules[type(model).__module__]
    if not hasattr(modeling, "eager_attention_forward"):
        raise ModelLoadError(
            f"batch_invariant does not know the attention of {type(model).__name__} (its "
            "module has no eager_attention_forward)",
            "set batch_invariant = false for this model",
        )
    transformers = require_transformers()
    from transformers.masking_utils import AttentionMaskInterface, eager_mask

    transformers.AttentionInterface.register(ROW_STABLE_ATTENTION, row_stable_eager_attention)
    AttentionMaskInterface.register(ROW_STABLE_ATTENTION, eager_mask)  # eager's float masks
    model.set_attn_implementation(ROW_STABLE_ATTENTION)  # type: ignore[operator]


# ----------------------------------------------------------------------------- loading


def resolve_dtype(spec: HFModelSpec | DummyModelSpec, device: torch.device) -> torch.dtype:
    """``auto``: bfloat16 on CUDA with bf16 support and on CPUs with bf16 instructions."""
    if spec.dtype != "auto":
        return _DTYPES[spec.dtype]
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if device.type == "cpu" and _cpu_has_bf16():
        return torch.bfloat16
    return torch.float32


def resolve_device(spec: HFModelSpec | DummyModelSpec) -> torch.device:
    if spec.device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(spec.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ModelLoadError(
            f"device {spec.device} requested but CUDA is not available",
            'set device = "cpu" or "auto"',
        )
    return device


def _cpu_has_bf16() -> bool:
    from specbench.hardware import cpu_flags

    return bool({"avx512_bf16", "amx_bf16"} & set(cpu_flags()))


def quantization_config(spec: HFModelSpec) -> Any:
    """The transformers quantization config a spec asks for (``None`` for full precision)."""
    q = spec.quantization
    if q is None:
        return None
    transformers = require_transformers()
    if isinstance(q, Bnb4BitSpec):
        return transformers.BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type=q.quant_type,
            bnb_4bit_compute_dtype=_DTYPES[q.compute_dtype],
            bnb_4bit_use_double_quant=q.double_quant,
        )
    if isinstance(q, Bnb8BitSpec):
        return transformers.BitsAndBytesConfig(load_in_8bit=True)
    if isinstance(q, QuantoSpec):
        return transformers.QuantoConfig(weights=q.weights)
    raise ModelLoadError(f"unknown quantization {q!r}")


_QUANT_PACKAGES = {
    "bnb-4bit": "bitsandbytes",
    "bnb-8bit": "bitsandbytes",
    "quanto": "optimum-quanto",
}


def load_hf_tokenizer(
    spec: HFModelSpec, source: str, local_only: bool = False, eos_extra: Sequence[int] = ()
) -> HFTokenizer:
    """The tokenizer of a spec (from ``spec.tokenizer``, else next to the weights)."""
    transformers = require_transformers()
    location = spec.tokenizer or source
    kwargs: dict[str, Any] = {"revision": spec.revision, "local_files_only": local_only}
    if spec.gguf_file and spec.tokenizer is None:
        kwargs["gguf_file"] = spec.gguf_file
    with quiet_transformers(), _hub_errors(location):
        tokenizer = transformers.AutoTokenizer.from_pretrained(
            location, trust_remote_code=spec.trust_remote_code, **kwargs
        )
    return HFTokenizer(tokenizer, eos_extra)


def load_hf_model(spec: HFModelSpec, source: str, name: str) -> HFLanguageModel:
    """Load weights and tokenizer; ``source`` is a local folder or a hub id."""
    transformers = require_transformers()
    device = resolve_device(spec)
    dtype = resolve_dtype(spec, device)
    kwargs: dict[str, Any] = {
        "revision": spec.revision,
        "dtype": dtype,
        "trust_remote_code": spec.trust_remote_code,
    }
    if spec.gguf_file:
        kwargs["gguf_file"] = spec.gguf_file
    if spec.batch_invariant:
        kwargs["attn_implementation"] = "eager"
    elif spec.attn_implementation:
        kwargs["attn_implementation"] = spec.attn_implementation
    quant = quantization_config(spec)
    if quant is not None:
        kwargs["quantization_config"] = quant
        kwargs["device_map"] = str(device)
    with quiet_transformers(), _hub_errors(source), _quant_errors(spec):
        model = transformers.AutoModelForCausalLM.from_pretrained(source, **kwargs)
    if quant is None:
        model.to(device)
    model.eval()
    shipped_attention = (
        spec.attn_implementation or "sdpa"
        if spec.batch_invariant
        else getattr(model.config, "_attn_implementation", None)
    )
    kernels = fast_kernels(model, spec.batch_invariant, spec.prepack and quant is None)
    eos = model.generation_config.eos_token_id if model.generation_config else None
    eos_ids = [eos] if isinstance(eos, int) else list(eos or [])
    tokenizer = load_hf_tokenizer(spec, source, eos_extra=eos_ids)
    info = {
        "source": source,
        "revision": spec.revision,
        "gguf_file": spec.gguf_file,
        "quantization": spec.quantization.model_dump() if spec.quantization else None,
        "attn_implementation": getattr(model.config, "_attn_implementation", None),
        # What transformers runs without specbench's kernels (its default when a row-stable
        # eager attention replaced it).
        "shipped_attention": shipped_attention,
        "batch_invariant": spec.batch_invariant,
        **kernels,
    }
    return checked(HFLanguageModel(model, tokenizer, name=name, info=info))


def fast_kernels(model: torch.nn.Module, batch_invariant: bool, prepack: bool) -> dict[str, Any]:
    """Make ``model`` batch-invariant and give its linear layers packed weights, as asked
    (in that order: packing replaces the row-stable layers with packed ones, which are row
    stable too); what the run header records about it."""
    from specbench.models.packed import ROW_FLOOR, pack_linear_layers

    if batch_invariant:
        make_batch_invariant(model)
    packed = pack_linear_layers(model, (torch.nn.Linear, RowStableLinear)) if prepack else 0
    return {"packed_linear_layers": packed, "packed_row_floor": ROW_FLOOR if packed else None}


def checked(model: HFLanguageModel) -> HFLanguageModel:
    """A batch-invariant model with the result of checking that on this CPU in its info."""
    if model.info.get("batch_invariant"):
        from specbench.models.invariance import check_batch_invariance

        model.info["batch_invariance"] = check_batch_invariance(model).as_dict()
    return model


@contextlib.contextmanager
def quiet_transformers(
    on_tensor: Callable[[int, int], None] | None = None,
) -> Iterator[None]:
    """Keep transformers' progress bars and known-harmless warnings off the user's screen.

    GGUF dequantization reports progress through ``on_tensor(done, total)`` instead of the
    tqdm bar transformers would print.
    """
    transformers = require_transformers()
    logging = transformers.utils.logging
    verbosity = logging.get_verbosity()
    logging.set_verbosity_error()
    logging.disable_progress_bar()
    try:
        gguf_utils = importlib.import_module("transformers.modeling_gguf_pytorch_utils")
    except ImportError:
        gguf_utils = None
    original_tqdm = getattr(gguf_utils, "tqdm", None)
    if original_tqdm is not None:
        gguf_utils.tqdm = _counting_iterator(on_tensor)  # type: ignore[union-attr]
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*MatMul8bitLt.*")
            yield
    finally:
        if original_tqdm is not None:
            gguf_utils.tqdm = original_tqdm  # type: ignore[union-attr]
        logging.set_verbosity(verbosity)
        logging.enable_progress_bar()


def _counting_iterator(
    on_item: Callable[[int, int], None] | None,
) -> Callable[..., Iterator[Any]]:
    def iterate(iterable: Any, *args: Any, **kwargs: Any) -> Iterator[Any]:
        items = list(iterable)
        for done, item in enumerate(items):
            if on_item is not None:
                on_item(done, len(items))
            yield item
        if on_item is not None:
            on_item(len(items), len(items))

    return iterate


@contextlib.contextmanager
def _hub_errors(source: str) -> Iterator[None]:
    """Turn transformers' loading errors into one line that says what to do."""
    try:
        yield
    except (OSError, ValueError) as error:
        if Path(source).exists():
            raise ModelLoadError(
                f"cannot load {source}: {_first_line(error)}",
                "check that the folder holds a transformers checkpoint (config.json and weights)",
            ) from error
        if isinstance(error, ValueError):
            raise ModelLoadError(
                f"cannot load '{source}': {_first_line(error)}",
                "check the model id and revision",
            ) from error
        raise ModelLoadError(
            f"cannot load '{source}': it is not a local folder or fetched catalogue model, and "
            f"the Hugging Face hub could not provide it ({_first_line(error)})",
            f"download it where the hub is reachable (huggingface-cli download {source}) "
            "or point model at a local folder",
        ) from error


@contextlib.contextmanager
def _quant_errors(spec: HFModelSpec) -> Iterator[None]:
    try:
        yield
    except (ImportError, ModuleNotFoundError) as error:
        if spec.quantization is None:
            raise
        package = _QUANT_PACKAGES[spec.quantization.method]
        raise ModelLoadError(
            f"{spec.quantization.method} quantization needs {package}: {_first_line(error)}",
            f"{install_extra('quant')} (or pip install {package})",
        ) from error


def _first_line(error: BaseException) -> str:
    lines = str(error).strip().splitlines()
    return lines[0] if lines else type(error).__name__
