"""The decoder architectures whose layers specbench computes itself (the lean forward,
:mod:`.lean`, and the fused layer operations, :mod:`.fused_layers`)."""

from __future__ import annotations

from typing import Any

#: Architectures whose decoder layer is exactly: norm, attention with rotary embeddings over
#: grouped key/value heads, residual, norm, gated MLP, residual (no sliding window, no
#: query/key norms, no soft-capping).
SUPPORTED = frozenset({"llama", "qwen2"})


def lean_supported(model: Any) -> bool:
    """Whether specbench's own layers (:class:`~specbench.models.hf.lean.LeanForward`, the
    fused operations) compute what ``model``'s own forward does."""
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
