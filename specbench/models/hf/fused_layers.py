"""A decoder layer's small operations as a few calls of specbench's bf16 CPU kernels.

Once the linear layers stream their weights at the memory's rate (the ``specbench``
kernel), what separates a CPU decoding step from its roofline is the glue between them: a
Qwen2.5-1.5B step ran about 70 torch operators per layer (norms in float32, rotary
embedding, cache writes, attention, activation, residual sums), 10.7 of its 72.5 ms on two
cores. This module gives a model's modules the fused operations of
``bf16_decode.cpp`` (:func:`specbench.models.bf16_kernels.ops`):

- each RMSNorm runs as one call;
- each gated MLP multiplies by one packed gate/up weight and applies ``silu(gate) * up`` in
  one call;
- each attention multiplies by one packed q/k/v weight and rotates the queries and keys in
  one call (``rotary_split``, bit for bit transformers' ``apply_rotary_pos_emb``);
- attention itself (for batch-invariant models, whose attention function specbench chooses)
  runs over each query's visible keys in one call.

Both of specbench's forwards use them: transformers' forward (the eager engine), through the
modules, and :class:`~specbench.models.hf.lean.LeanForward` (the static engine), which also
writes the rotated keys into its cache in the same call (``rotary_write``). The two engines
therefore still agree bit for bit, and a row's result does not depend on the rows scored
with it (each operation reduces in one fixed order per row). The fused operations are not
bit for bit torch's own (a different summation order in norms and attention): logits agree
with transformers' layers to bf16 rounding.
"""

from __future__ import annotations

import sys
from typing import Any, Literal

import torch

from specbench.models import bf16_kernels
from specbench.models.hf.architectures import lean_supported
from specbench.models.hf.masks import visible_keys
from specbench.models.packed import PackedLinear, PackedWeight, pack_weight

#: Activation names whose function is ``x * sigmoid(x)``.
SILU = frozenset({"silu", "swish"})
MLP_PROJECTIONS = ("gate_proj", "up_proj", "down_proj")
ATTENTION_PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj")


def fuse_decoder_layers(model: Any) -> int:
    """Give ``model``'s norms, MLPs and attention projections the fused operations (and,
    through the attention function of batch-invariant models, attention itself), in place;
    the number of decoder layers fused (0: the model is not one this applies to: a supported
    architecture, SiLU MLPs, every projection packed on specbench's kernel, bf16 on a CPU)."""
    if not lean_supported(model) or getattr(model.config, "hidden_act", None) not in SILU:
        return 0
    # Projections packed on specbench's kernel mean the kernel runs here (on either path).
    layers = list(model.model.layers)
    if not all(_packed_on_specbench(layer.mlp, MLP_PROJECTIONS, False) for layer in layers):
        return 0
    if not all(
        _packed_on_specbench(layer.self_attn, ATTENTION_PROJECTIONS, True) for layer in layers
    ):
        return 0
    modeling = sys.modules[type(model).__module__]
    norms = [m for m in model.modules() if _is_rms_norm(m, modeling)]
    for norm in norms:
        norm.__class__ = _fused_class(type(norm), FusedRMSNorm)
    for layer in layers:
        mlp, attention = layer.mlp, layer.self_attn
        mlp.gate_up = fuse_projections([mlp.gate_proj, mlp.up_proj], "specbench")
        mlp.__class__ = _fused_class(type(mlp), FusedGatedMLP)
        projections = [attention.q_proj, attention.k_proj, attention.v_proj]
        if one_bias_rule(projections):
            attention.qkv = fuse_projections(projections, "specbench")
            attention.qkv_bias = fused_bias(projections)
            attention.__class__ = _fused_class(type(attention), FusedSelfAttention)
        attention.fused_attention = True
    return len(layers)


def attends_fused(module: Any) -> bool:
    """Whether ``module`` (a layer's attention) runs :func:`fused_attention` now: fused by
    :func:`fuse_decoder_layers` (a bf16 CPU model), and no gradients wanted."""
    return bool(getattr(module, "fused_attention", False)) and not torch.is_grad_enabled()


class FusedRMSNorm(torch.nn.Module):
    """Mixed into a model's own RMSNorm class: one call of the fused norm for bf16 CPU
    inference, the model's own forward otherwise (training, other dtypes)."""

    weight: torch.Tensor
    variance_epsilon: float

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        if _fused_call(hidden_states):
            out: torch.Tensor = bf16_kernels.ops().rms_norm(
                hidden_states, self.weight, float(self.variance_epsilon)
            )
            return out
        return super().forward(hidden_states)  # type: ignore[no-any-return]


class FusedGatedMLP(torch.nn.Module):
    """Mixed into a model's own gated MLP class: one packed gate/up product and one fused
    activation for bf16 CPU inference, the model's own forward otherwise."""

    gate_up: PackedWeight
    down_proj: torch.nn.Module

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if _fused_call(x):
            activated = bf16_kernels.ops().silu_mul(self.gate_up.linear(x, None))
            out: torch.Tensor = self.down_proj(activated)
            return out
        return super().forward(x)  # type: ignore[no-any-return]


class FusedSelfAttention(torch.nn.Module):
    """Mixed into a model's own attention class: for bf16 CPU inference, one packed q/k/v
    product and one call for the rotary embedding (transformers' rounding, bit for bit),
    then the cache update and attention function transformers' forward would call; the
    model's own forward otherwise."""

    qkv: PackedWeight
    qkv_bias: torch.Tensor | None
    o_proj: torch.nn.Module
    config: Any
    layer_idx: int
    scaling: float
    modeling: Any  # the model's modeling module (set on the fused class)

    def forward(
        self,
        hidden_states: torch.Tensor,
        position_embeddings: tuple[torch.Tensor, torch.Tensor] | None = None,
        attention_mask: torch.Tensor | None = None,
        cache: Any = None,
        **kwargs: Any,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        if not _fused_call(hidden_states) or position_embeddings is None or self.training:
            return super().forward(  # type: ignore[no-any-return]
                hidden_states, position_embeddings, attention_mask, cache, **kwargs
            )
        batch, rows = hidden_states.shape[:2]
        config = self.config
        heads = int(config.num_attention_heads)
        kv_heads = int(getattr(config, "num_key_value_heads", None) or heads)
        cos, sin = position_embeddings
        query, key, value = bf16_kernels.ops().rotary_split(
            self.qkv.linear(hidden_states, self.qkv_bias), cos, sin, heads, kv_heads
        )
        query = query.view(batch, rows, heads, -1).transpose(1, 2)
        key = key.view(batch, rows, kv_heads, -1).transpose(1, 2)
        value = value.view(batch, rows, kv_heads, -1).transpose(1, 2)
        if cache is not None:
            key, value = cache.update(key, value, self.layer_idx, kwargs=kwargs)
        interface = self.modeling.ALL_ATTENTION_FUNCTIONS.get_interface(
            config._attn_implementation, self.modeling.eager_attention_forward
        )
        extra = {"sliding_window": self.sliding_window} if hasattr(self, "sliding_window") else {}
        output, weights = interface(
            self,
            query,
            key,
            value,
            attention_mask,
            dropout=0.0,
            scaling=self.scaling,
            **extra,
            **kwargs,
        )
        out: torch.Tensor = self.o_proj(output.reshape(batch, rows, -1).contiguous())
        return out, weights


def fused_attention(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float,
) -> torch.Tensor:
    """:func:`~specbench.models.hf.numerics.grouped_attention`'s result (``[B, M, H, D]``)
    from the fused kernel: ``query`` ``[B, H, M, D]``, ``key``/``value`` ``[B, G, L, D]``, an
    additive mask whose zeros mark the keys a query sees (``None``: all)."""
    visible = None if attention_mask is None else visible_keys(attention_mask, key.shape[-2])
    out: torch.Tensor = bf16_kernels.ops().attend(query, key, value, visible, scaling)
    return out


def _fused_call(x: torch.Tensor) -> bool:
    return x.dtype == torch.bfloat16 and x.device.type == "cpu" and not torch.is_grad_enabled()


def _packed_on_specbench(module: Any, names: tuple[str, ...], biases: bool) -> bool:
    """Whether the projections ``names`` of ``module`` are packed on specbench's kernel
    (and have no bias unless ``biases``)."""
    projections = [getattr(module, name, None) for name in names]
    return all(
        isinstance(p, PackedLinear)
        and p.packed_weight.kernel == "specbench"
        and (biases or p.bias is None)
        for p in projections
    )


def fuse_projections(
    projections: list[Any], kernel: Literal["specbench", "onednn"]
) -> PackedWeight:
    """One packed weight of ``projections`` (their outputs in order) on ``kernel``. On
    specbench's kernel, where each one's outputs fill whole blocks of 64 (the usual sizes),
    their own packed weights become views into it, so the fused copy costs no memory."""
    # The layout of the projections' own packed weights (the fused one must match them).
    few_rows = kernel == "specbench" and all(
        bf16_kernels.packed_for_few_rows(p.packed_weight.data) for p in projections
    )
    with torch.no_grad():
        fused = pack_weight(torch.cat([p.weight for p in projections]), kernel, few_rows)
    if kernel == "specbench" and all(p.out_features % 64 == 0 for p in projections):
        first = 0
        for p in projections:
            blocks = p.out_features // 64
            p.packed_weight = PackedWeight(
                "specbench", fused.data[first : first + blocks], p.out_features
            )
            first += blocks
    return fused


def one_bias_rule(projections: list[Any]) -> bool:
    """Whether ``projections`` all have a bias or all have none (else they cannot share one
    fused product)."""
    return len({p.bias is None for p in projections}) == 1


def fused_bias(projections: list[Any]) -> torch.Tensor | None:
    """The fused product's bias: the projections' biases in order, ``None`` without."""
    if projections[0].bias is None:
        return None
    return torch.cat([p.bias for p in projections]).detach()


def _is_rms_norm(module: torch.nn.Module, modeling: Any) -> bool:
    """A norm of the model's own RMSNorm class (``weight * normed``; not Gemma's
    ``1 + weight``: only architectures :func:`lean_supported` knows come here)."""
    name = type(module).__name__
    return (
        name.endswith("RMSNorm")
        and getattr(modeling, name, None) is type(module)
        and hasattr(module, "variance_epsilon")
    )


_CLASSES: dict[tuple[type, type], type] = {}


def own_class(module: torch.nn.Module) -> type | None:
    """The model's own class of a fused module (what transformers ships), ``None`` for any
    other module."""
    for (base, _), made in _CLASSES.items():
        if type(module) is made:
            return base
    return None


def _fused_class(base: type, mixin: type) -> type:
    """``base`` with ``mixin``'s forward first (one class per pair; ``isinstance`` against
    the model's own class still holds)."""
    key = (base, mixin)
    if key not in _CLASSES:
        modeling = sys.modules[base.__module__]
        _CLASSES[key] = type(f"Fused{base.__name__}", (mixin, base), {"modeling": modeling})
    return _CLASSES[key]
