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
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from specbench.models.packed import PackedWeight

#: Architectures whose decoder layer is exactly: norm, attention with rotary embeddings over
#: grouped key/value heads, residual, norm, gated MLP, residual (no sliding window, no
#: query/key norms, no soft-capping).
SUPPORTED = frozenset({"llama", "qwen2"})


def lean_supported(model: Any) -> bool:
    """Whether :class:`LeanForward` computes what ``model``'s own forward does."""
    config = getattr(model, "config", None)
    if getattr(config, "model_type", None) not in SUPPORTED:
        return False
    if getattr(config, "use_sliding_window", False):
        return False
    layer_types = getattr(config, "layer_types", None) or []
    if any(kind != "full_attention" for kind in layer_types):
        return False
    inner = getattr(model, "model", None)
    return all(hasattr(inner, name) for name in ("embed_tokens", "layers", "norm", "rotary_emb"))


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
        from specbench.models.hf.numerics import grouped_attention

        m = ids.shape[0]
        end = start + m
        states = self.embed(ids.view(1, m))
        cos, sin = self.rotary(states, positions.view(1, m))
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
            residual = states
            normed = layer.post_attention_layernorm(states)
            if fused is not None:
                gate, up = fused.gate_up.linear(normed, None).chunk(2, dim=-1)
                mlp = layer.mlp
                states = residual + mlp.down_proj(mlp.act_fn(gate) * up)
            else:
                states = residual + layer.mlp(normed)
        states = self.norm(states)[:, -n_logits:]
        logits: torch.Tensor = self.lm_head(states)
        return logits[0], states[0].float() if hidden else None


@dataclass
class _Fused:
    """One layer's query/key/value and gate/up projections as one packed weight each."""

    qkv: PackedWeight
    qkv_bias: torch.Tensor | None
    qkv_sizes: list[int]
    gate_up: PackedWeight


def _fused(layer: Any) -> _Fused | None:
    """Packed fused projections of ``layer`` where its projections are packed already
    (``prepack``); ``None`` keeps its own modules."""
    from specbench.models.packed import PackedLinear, pack_weight

    attention, mlp = layer.self_attn, layer.mlp
    projections = [attention.q_proj, attention.k_proj, attention.v_proj]
    modules = [*projections, mlp.gate_proj, mlp.up_proj]
    if not all(isinstance(p, PackedLinear) for p in modules):
        return None
    if any(p.bias is not None for p in (mlp.gate_proj, mlp.up_proj)):
        return None
    kernels = {p.packed_weight.kernel for p in modules}
    if len(kernels) != 1:
        return None
    kernel = kernels.pop()
    biases = [p.bias for p in projections]
    with torch.no_grad():
        qkv = pack_weight(torch.cat([p.weight for p in projections]), kernel)
        bias = None if any(b is None for b in biases) else torch.cat(biases)
        gate_up = pack_weight(torch.cat([mlp.gate_proj.weight, mlp.up_proj.weight]), kernel)
    return _Fused(qkv, bias, [p.weight.shape[0] for p in projections], gate_up)
