"""Row-stable kernels: linear layers and attention whose rows do not depend on the batch,
the chunk or the tree around them (``batch_invariant``), and grouped attention without
``repeat_kv`` copies.
"""

from __future__ import annotations

import sys
from typing import Any

import torch

from specbench.errors import ModelLoadError
from specbench.models.hf.library import require_transformers
from specbench.models.hf.masks import PerMask, visible_keys


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
    from specbench.models.hf.fused_layers import attends_fused, fused_attention

    config = getattr(module, "config", None)
    if getattr(config, "model_type", None) in GROUPED_ATTENTION_TYPES:
        scaling = kwargs.get("scaling", args[0] if args else None)
        if scaling is not None and not module.training:
            if attends_fused(module):  # specbench's kernel, what the lean forward runs
                return fused_attention(query, key, value, attention_mask, float(scaling)), None
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


def _visible_layout(
    attention_mask: torch.Tensor | None, length: int
) -> tuple[torch.Tensor, torch.Tensor] | None:
    """For a mask under which rows see different keys (a chain's rows, prefixes of
    different lengths; a token tree's nodes, with their siblings masked between them; padded
    rows of a batch): per row, the slots it sees in order padded to the longest
    (``[B, M, W]``) and the additive mask of the padding. ``None`` when every row sees the
    same prefix ``[0, n)`` of the keys, as a decoding step does, and under graph capture or
    compilation."""
    if attention_mask is None or torch.compiler.is_compiling():
        return None
    if attention_mask.is_cuda and torch.cuda.is_current_stream_capturing():
        return None
    return _layouts(attention_mask, length)


def _layout(attention_mask: torch.Tensor, length: int) -> tuple[torch.Tensor, torch.Tensor] | None:
    visible = visible_keys(attention_mask, length)  # [B, M, L]
    counts = visible.sum(-1)
    prefixes = visible.to(torch.int8).cumprod(-1).sum(-1)
    # One plain product only where every row sees the same prefix: rows that see fewer keys
    # than the product reduces over (a chain's earlier rows) get masked keys after theirs,
    # which changed their sums on an AVX2 CPU.
    if bool((prefixes == counts).all()) and bool((counts == counts.max()).all()):
        return None
    width = int(counts.max())
    # Visible slots first, in order (a stable sort of "not visible"), then padding.
    order = torch.sort((~visible).to(torch.int8), dim=-1, stable=True).indices[..., :width]
    padding = torch.arange(width, device=counts.device) >= counts.unsqueeze(-1)
    fill = torch.zeros(padding.shape, dtype=attention_mask.dtype, device=counts.device)
    return order, fill.masked_fill_(padding, torch.finfo(attention_mask.dtype).min)


#: The gather layout of the last mask seen (a forward passes one mask to every layer).
_layouts: PerMask[tuple[torch.Tensor, torch.Tensor] | None] = PerMask(_layout)


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
    choice of SpecExec). Rows are taken in groups that see the same number of keys, each
    group's softmax and value product exactly as long as a decoding step's: padding a
    shorter row with zero-weight keys changed its sum on an AVX2 CPU (251 keys against 252,
    MKL's bf16 product), though not on AVX-512 BF16."""
    batch, heads, rows, dim = query.shape
    groups, length = key.shape[1], key.shape[-2]
    per_group = heads // groups
    scores = torch.matmul(query.reshape(batch, groups, per_group * rows, dim), key.transpose(2, 3))
    scores = (scores * scaling).view(batch, groups, per_group, rows, length)
    # One entry per (sequence, row): [B*M, G, P, L], and what each entry sees.
    scores = scores.permute(0, 3, 1, 2, 4).reshape(batch * rows, groups, per_group, length)
    slots_of = order.reshape(batch * rows, -1)
    counts = (padding == 0).sum(-1).reshape(-1)
    sequence_of = torch.arange(batch, device=order.device).repeat_interleave(rows)
    output = query.new_empty(batch * rows, groups, per_group, dim)
    weights = torch.zeros(
        batch * rows, groups, per_group, length, dtype=query.dtype, device=query.device
    )
    for count in torch.unique(counts).tolist():
        chosen = (counts == count).nonzero().squeeze(-1)
        slots = slots_of[chosen, :count]  # [S, c]: each entry's keys, in a decoding step's order
        index = slots.view(-1, 1, 1, count).expand(-1, groups, per_group, count)
        picked = torch.gather(scores[chosen], -1, index)
        part = torch.nn.functional.softmax(picked, dim=-1, dtype=torch.float32).to(query.dtype)
        # The entries' values, [S, G, c, D]: one product per entry and group, whose rows are
        # that group's query heads (as in a decoding step).
        values = value[sequence_of[chosen].view(-1, 1), :, slots].permute(0, 2, 1, 3)
        if per_group == 1:  # one row alone would take the one-row kernel: run it as two
            output[chosen] = torch.matmul(torch.cat([part, part], dim=-2), values)[..., :1, :]
        else:
            output[chosen] = torch.matmul(part, values)
        weights[chosen] = weights[chosen].scatter(-1, index, part)
    output = output.view(batch, rows, heads, dim)  # what transformers' attention returns
    weights = weights.view(batch, rows, heads, length).transpose(1, 2)
    return output, weights


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
