"""A lean forward for Llama-family decoders on a CPU: the model's own modules and weights,
a fifth of the operations.

A decoding step of transformers' forward runs about 250 tensor operations per layer on a
CPU (cache bookkeeping, mask building, views and slices, keyword plumbing), a few
microseconds each: on the 2-core machines of this project that was 15-20% of a 0.5B
model's step. :class:`LeanForward` runs the same layers as gpt-fast does: the embedding,
each layer's norms, projections and MLP *modules* (so packed weights and hooks on them stay
in effect), the model's own rotary embedding and ``apply_rotary_pos_emb``, and attention over
exactly the live slots of a preallocated cache, with
:func:`~specbench.models.hf.numerics.grouped_attention` (the row-stable product order of
``batch_invariant``). It computes what transformers' eager forward computes, operation for
operation, so a position's logits do not depend on how many positions a call scores
(checked bit for bit by the static engine's tests). Models it does not know, and calls where
someone hooks a decoder layer (EAGLE-3's feature capture), take transformers' forward.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Any, NamedTuple

import torch

from specbench.models.packed import PackedWeight


class LeanForward:
    """The forward of a supported model over a cache of per-layer key and value buffers
    (``[1, kv_heads, slots, head_dim]``), writing the new rows at ``start``."""

    def __init__(self, model: Any) -> None:
        self.model = model
        inner = model.model
        self.embed = inner.embed_tokens
        self.layers = list(inner.layers)
        self.norm = inner.norm
        self.rotary = inner.rotary_emb
        self.lm_head = model.lm_head
        self.rotate = sys.modules[type(model).__module__].apply_rotary_pos_emb
        self.fused = [_fused(layer) for layer in self.layers]
        config = model.config
        self.heads = int(config.num_attention_heads)
        self.kv_heads = int(getattr(config, "num_key_value_heads", None) or self.heads)
        #: Whether every layer runs on specbench's fused kernels (``fuse_decoder_layers``).
        self.kernels = all(
            f is not None and f.qkv.kernel == "specbench" and attends_fused_layer(layer)
            for f, layer in zip(self.fused, self.layers, strict=True)
        )

    def hooked(self) -> bool:
        """Whether someone watches a decoder layer (then transformers' forward must run)."""
        return any(layer._forward_pre_hooks or layer._forward_hooks for layer in self.layers)

    def __call__(
        self,
        ids: torch.Tensor,
        positions: torch.Tensor,
        keys: list[torch.Tensor],
        values: list[torch.Tensor],
        start: int,
        mask: torch.Tensor | None,
        n_logits: int,
        hidden: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Raw logits ``[n_logits, V]`` of the last rows of ``ids`` (``[m]``) at
        ``positions``, and their final normed states (float) when ``hidden``. ``mask`` is
        the additive ``[1, 1, m, start + m]`` mask of the call (``None``: every query sees
        every slot before it and itself, one row)."""
        m = ids.shape[0]
        states = self.embed(ids.view(1, m))
        cos, sin = self.rotary(states, positions.view(1, m))
        call = _Call(cos, sin, keys, values, start, mask)
        states = (self._fused_layers if self.kernels else self._torch_layers)(states, call)
        states = self.norm(states)[:, -n_logits:]
        logits: torch.Tensor = self.lm_head(states)
        return logits[0], states[0].float() if hidden else None

    def _torch_layers(self, states: torch.Tensor, call: _Call) -> torch.Tensor:
        """The decoder layers in torch operators (transformers' eager layer)."""
        from specbench.models.hf.numerics import grouped_attention

        cos, sin, keys, values, start, mask = call
        m = states.shape[1]
        end = start + m
        for index, layer in enumerate(self.layers):
            attention = layer.self_attn
            residual = states
            normed = layer.input_layernorm(states)
            shape = (1, m, -1, attention.head_dim)
            fused = self.fused[index]
            if fused is not None:
                qkv = fused.qkv.linear(normed, fused.qkv_bias)
                query, key, value = torch.split(qkv, fused.qkv_sizes, dim=-1)
            else:
                query = attention.q_proj(normed)
                key = attention.k_proj(normed)
                value = attention.v_proj(normed)
            query = query.view(shape).transpose(1, 2)
            key = key.view(shape).transpose(1, 2)
            value = value.view(shape).transpose(1, 2)
            query, key = self.rotate(query, key, cos, sin)
            keys[index][:, :, start:end] = key
            values[index][:, :, start:end] = value
            output, _ = grouped_attention(
                query,
                keys[index][:, :, :end],
                values[index][:, :, :end],
                mask,
                float(attention.scaling),
            )
            states = residual + attention.o_proj(output.reshape(1, m, -1))
            states = states + layer.mlp(layer.post_attention_layernorm(states))
        return states

    def _fused_layers(self, states: torch.Tensor, call: _Call) -> torch.Tensor:
        """The decoder layers on specbench's fused kernels (:mod:`.fused_layers`): eight
        calls a layer, each residual sum taken with the norm after it."""
        from specbench.models import bf16_kernels
        from specbench.models.hf.fused_layers import fused_attention

        ops = bf16_kernels.ops()
        cos, sin, keys, values, start, mask = call
        m = states.shape[1]
        end = start + m
        delta: torch.Tensor | None = None
        for index, layer in enumerate(self.layers):
            attention = layer.self_attn
            fused = self.fused[index]
            assert fused is not None  # self.kernels: every layer has its fused projections
            norm = layer.input_layernorm
            if delta is None:
                normed = ops.rms_norm(states, norm.weight, norm.variance_epsilon)
            else:
                states, normed = ops.add_rms_norm(states, delta, norm.weight, norm.variance_epsilon)
            qkv = fused.qkv.linear(normed, fused.qkv_bias)
            query = ops.rotary_write(
                qkv, cos, sin, self.heads, self.kv_heads, keys[index], values[index], start
            )
            output = fused_attention(
                query,
                keys[index][:, :, :end],
                values[index][:, :, :end],
                mask,
                float(attention.scaling),
            )
            delta = attention.o_proj(output.view(1, m, -1))
            norm = layer.post_attention_layernorm
            states, normed = ops.add_rms_norm(states, delta, norm.weight, norm.variance_epsilon)
            delta = layer.mlp(normed)
        return states if delta is None else states + delta


class _Call(NamedTuple):
    """What every layer of one forward call reads: the rotary tables, each layer's key and
    value buffers, where the new rows go, the call's additive mask."""

    cos: torch.Tensor
    sin: torch.Tensor
    keys: list[torch.Tensor]
    values: list[torch.Tensor]
    start: int
    mask: torch.Tensor | None


@dataclass
class _Fused:
    """One layer's query/key/value projections as one packed weight."""

    qkv: PackedWeight
    qkv_bias: torch.Tensor | None
    qkv_sizes: list[int]


def _fused(layer: Any) -> _Fused | None:
    """The packed fused query/key/value projection of ``layer`` where its projections are
    packed already (``prepack``); ``None`` keeps its own modules. (Gate and up are fused
    by the MLP itself, :mod:`.fused_layers`, where specbench's kernel runs.)"""
    from specbench.models.hf.fused_layers import fuse_projections, fused_bias, one_bias_rule
    from specbench.models.packed import PackedLinear

    attention = layer.self_attn
    projections = [attention.q_proj, attention.k_proj, attention.v_proj]
    sizes = [p.out_features for p in projections]
    if isinstance(getattr(attention, "qkv", None), PackedWeight):  # fused by the loader
        return _Fused(attention.qkv, attention.qkv_bias, sizes)
    if not all(isinstance(p, PackedLinear) for p in projections):
        return None
    kernels = {p.packed_weight.kernel for p in projections}
    if len(kernels) != 1 or not one_bias_rule(projections):
        return None
    qkv = fuse_projections(projections, kernels.pop())
    return _Fused(qkv, fused_bias(projections), sizes)


def attends_fused_layer(layer: Any) -> bool:
    """Whether ``layer``'s norms, MLP and attention run on the fused kernels."""
    from specbench.models.hf.fused_layers import FusedGatedMLP, FusedRMSNorm

    return (
        isinstance(layer.input_layernorm, FusedRMSNorm)
        and isinstance(layer.post_attention_layernorm, FusedRMSNorm)
        and isinstance(layer.mlp, FusedGatedMLP)
        and bool(getattr(layer.self_attn, "fused_attention", False))
    )
