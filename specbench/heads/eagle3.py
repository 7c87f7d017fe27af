"""EAGLE-3 heads (Li et al., 2025): one decoder layer that drafts from the target's features.

At position ``t`` the head reads the target's hidden states at three layers (low, middle,
high: the *inputs* of layers ``aux_layer_ids``, i.e. Hugging Face's ``hidden_states[i]``),
projects their concatenation ``3H -> H`` with ``fc``, and runs one decoder layer over
``[input_norm(embed(x[t+1])), hidden_norm(feature)]`` (queries, keys and values read ``2H``).
``norm`` and ``lm_head`` turn the output into logits over a reduced *draft* vocabulary, mapped
to target ids by ``d2t`` (``target = draft + d2t[draft]``). The output before ``norm`` is fed
back as the next position's feature, so a chain of drafts needs no further target call.

Two hub layouts hold the same weights:

* the EAGLE repository's flat ``LlamaForCausalLMEagle3`` config (a Llama config plus
  ``draft_vocab_size``), weights ``midlayer.*``;
* the speculators library's ``Eagle3DraftModel``/``Eagle3Speculator`` config
  (``speculators_model_type = "eagle3"``, the layer's Llama config nested in
  ``transformer_layer_config``, ``draft_vocab_size``, ``norm_before_residual``,
  ``target_hidden_size``, ``eagle_aux_hidden_state_layer_ids``), weights ``layers.0.*``.

Both have ``fc``, ``norm``, ``lm_head``, ``d2t``, ``t2d`` and optionally ``embed_tokens``
(absent: the target's embedding is used, as vLLM does). specbench writes the speculators
layout, which vLLM's ``eagle3`` method loads.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from specbench.errors import ModelLoadError
from specbench.heads.hub import read_state, resolve_folder

CONFIG = "config.json"
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
SPECULATORS_VERSION = "0.3.0"
LAYER_FIELDS = (
    "hidden_size",
    "intermediate_size",
    "num_attention_heads",
    "num_key_value_heads",
    "head_dim",
    "rms_norm_eps",
    "max_position_embeddings",
    "vocab_size",
)


@dataclass(frozen=True)
class Eagle3Config:
    """The head's shape and conventions (see the module docstring)."""

    hidden_size: int
    intermediate_size: int
    num_attention_heads: int
    num_key_value_heads: int
    vocab_size: int  # the target's
    draft_vocab_size: int
    target_hidden_size: int
    head_dim: int | None = None
    rms_norm_eps: float = 1e-6
    rope_theta: float = 10000.0
    rope_scaling: dict[str, Any] | None = None
    max_position_embeddings: int = 32768
    aux_layer_ids: tuple[int, ...] | None = None
    norm_before_residual: bool = False
    attention_bias: bool = False
    own_embeddings: bool = False
    layout: str = "speculators"  # or "flat": where it was read from
    extra: dict[str, Any] = field(default_factory=dict, compare=False)

    @property
    def dim_per_head(self) -> int:
        return self.head_dim or self.hidden_size // self.num_attention_heads

    def layer_config(self) -> dict[str, Any]:
        """The decoder layer's Llama config, as both layouts write it."""
        out: dict[str, Any] = {
            "model_type": "llama",
            "architectures": ["LlamaForCausalLM"],
            "hidden_act": "silu",
            "num_hidden_layers": 1,
            "attention_bias": self.attention_bias,
            "mlp_bias": False,
            "tie_word_embeddings": False,
            "rope_theta": self.rope_theta,
        }
        for name in LAYER_FIELDS:
            out[name] = getattr(self, name)
        out["head_dim"] = self.dim_per_head
        if self.rope_scaling:
            out["rope_scaling"] = self.rope_scaling
        return out


class RMSNorm(nn.Module):
    def __init__(self, size: int, eps: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(size))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = x.dtype
        x = x.float()
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x.to(dtype)


class KVCache:
    """Keys and values of the positions a head has processed, ``[kv_heads, T, d]`` each."""

    def __init__(self) -> None:
        self.keys: torch.Tensor | None = None
        self.values: torch.Tensor | None = None

    def __len__(self) -> int:
        return 0 if self.keys is None else int(self.keys.shape[-2])

    def append(self, keys: torch.Tensor, values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.keys is None or self.values is None:
            self.keys, self.values = keys, values
        else:
            self.keys = torch.cat([self.keys, keys], dim=-2)
            self.values = torch.cat([self.values, values], dim=-2)
        return self.keys, self.values

    def crop(self, length: int) -> None:
        if self.keys is not None and self.values is not None and len(self) > length:
            self.keys = self.keys[..., :length, :]
            self.values = self.values[..., :length, :]


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat([-x[..., half:], x[..., :half]], dim=-1)


class Attention(nn.Module):
    def __init__(self, config: Eagle3Config) -> None:
        super().__init__()
        d, heads, kv = config.dim_per_head, config.num_attention_heads, config.num_key_value_heads
        inputs, bias = 2 * config.hidden_size, config.attention_bias
        self.heads, self.kv_heads, self.dim = heads, kv, d
        self.q_proj = nn.Linear(inputs, heads * d, bias=bias)
        self.k_proj = nn.Linear(inputs, kv * d, bias=bias)
        self.v_proj = nn.Linear(inputs, kv * d, bias=bias)
        self.o_proj = nn.Linear(heads * d, config.hidden_size, bias=False)

    def project(
        self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor]
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Queries, keys and values of ``x`` (``[T, 2H]``) per head, ``[heads, T, d]``, with
        the rotary embedding applied to queries and keys."""
        length = x.shape[0]
        cos, sin = rope
        q = self.q_proj(x).view(length, self.heads, self.dim).transpose(0, 1)
        k = self.k_proj(x).view(length, self.kv_heads, self.dim).transpose(0, 1)
        v = self.v_proj(x).view(length, self.kv_heads, self.dim).transpose(0, 1)
        return q * cos + _rotate_half(q) * sin, k * cos + _rotate_half(k) * sin, v

    def forward(
        self,
        x: torch.Tensor,
        rope: tuple[torch.Tensor, torch.Tensor],
        cache: KVCache | None,
        allowed: torch.Tensor | None,
    ) -> torch.Tensor:
        """``x`` is ``[T, 2H]`` (one sequence); ``allowed[i, j]``: query ``i`` may read key
        ``j`` of the cache followed by these ``T`` positions (``None``: causal)."""
        length = x.shape[0]
        q, k, v = self.project(x, rope)
        before = 0 if cache is None else len(cache)
        if cache is not None:
            k, v = cache.append(k, v)
        if allowed is None:
            allowed = torch.ones(length, before + length, dtype=torch.bool, device=x.device)
            allowed[:, before:] = torch.tril(allowed[:, before:])
        groups = self.heads // self.kv_heads
        k = k.repeat_interleave(groups, dim=0)
        v = v.repeat_interleave(groups, dim=0)
        out = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=allowed)
        result: torch.Tensor = self.o_proj(out.transpose(0, 1).reshape(length, -1))
        return result


class MLP(nn.Module):
    def __init__(self, config: Eagle3Config) -> None:
        super().__init__()
        self.gate_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias=False)
        self.up_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias=False)
        self.down_proj = nn.Linear(config.intermediate_size, config.hidden_size, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.down_proj(
            torch.nn.functional.silu(self.gate_proj(x)) * self.up_proj(x)
        )
        return out


class DecoderLayer(nn.Module):
    """The head's layer: attention over ``[norm(embedding), norm(feature)]``, then an MLP."""

    def __init__(self, config: Eagle3Config) -> None:
        super().__init__()
        eps = config.rms_norm_eps
        self.norm_before_residual = config.norm_before_residual
        self.input_layernorm = RMSNorm(config.hidden_size, eps)
        self.hidden_norm = RMSNorm(config.hidden_size, eps)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, eps)
        self.self_attn = Attention(config)
        self.mlp = MLP(config)

    def forward(
        self,
        embeds: torch.Tensor,
        hidden: torch.Tensor,
        rope: tuple[torch.Tensor, torch.Tensor],
        cache: KVCache | None,
        allowed: torch.Tensor | None,
    ) -> torch.Tensor:
        normed = self.hidden_norm(hidden)
        residual = normed if self.norm_before_residual else hidden
        x = torch.cat([self.input_layernorm(embeds), normed], dim=-1)
        hidden = residual + self.self_attn(x, rope, cache, allowed)
        out: torch.Tensor = hidden + self.mlp(self.post_attention_layernorm(hidden))
        return out


class Eagle3Head(nn.Module):
    """The head's weights and its forward pass (one sequence at a time, rows ``[T, ...]``)."""

    d2t: torch.Tensor
    t2d: torch.Tensor
    _rotary: tuple[nn.Module]

    def __init__(self, config: Eagle3Config) -> None:
        super().__init__()
        self.config = config
        aux = len(config.aux_layer_ids or (0, 0, 0))
        self.fc = nn.Linear(aux * config.target_hidden_size, config.hidden_size, bias=False)
        self.layers = nn.ModuleList([DecoderLayer(config)])
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.lm_head = nn.Linear(config.hidden_size, config.draft_vocab_size, bias=False)
        self.register_buffer("d2t", torch.zeros(config.draft_vocab_size, dtype=torch.long))
        self.register_buffer("t2d", torch.ones(config.vocab_size, dtype=torch.bool))
        self.embed_tokens: nn.Embedding | None = (
            nn.Embedding(config.vocab_size, config.hidden_size) if config.own_embeddings else None
        )
        # Kept out of the module tree: ``.to(bfloat16)`` must not round its frequencies.
        self._rotary = (_rotary(config),)

    def rope(
        self, positions: torch.Tensor, dtype: torch.dtype
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """cos and sin at ``positions`` (``[T]``), shaped to broadcast over heads."""
        probe = torch.zeros(1)
        cos, sin = self._rotary[0](probe, positions.cpu().unsqueeze(0))
        return cos[0].to(positions.device, dtype), sin[0].to(positions.device, dtype)

    def combine(self, features: torch.Tensor) -> torch.Tensor:
        """The target's concatenated layer features ``[T, n * H_target]`` -> ``[T, H]``."""
        out: torch.Tensor = self.fc(features.to(self.fc.weight.dtype))
        return out

    def forward(
        self,
        embeds: torch.Tensor,
        hidden: torch.Tensor,
        positions: torch.Tensor,
        cache: KVCache | None = None,
        allowed: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Output states before ``norm`` (fed back as the next feature), ``[T, H]``."""
        rope = self.rope(positions, embeds.dtype)
        out: torch.Tensor = self.layer(embeds, hidden, rope, cache, allowed)
        return out

    @property
    def layer(self) -> DecoderLayer:
        layer = self.layers[0]
        assert isinstance(layer, DecoderLayer)
        return layer

    def draft_logits(self, prenorm: torch.Tensor) -> torch.Tensor:
        """Logits over the draft vocabulary, ``[..., draft_vocab_size]``."""
        out: torch.Tensor = self.lm_head(self.norm(prenorm))
        return out

    def target_ids(self, draft_ids: torch.Tensor) -> torch.Tensor:
        return draft_ids + self.d2t[draft_ids]


def _rotary(config: Eagle3Config) -> nn.Module:
    """Transformers' Llama rotary embedding (it knows every rope scaling variant)."""
    from transformers import LlamaConfig
    from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding

    layer = LlamaConfig(**config.layer_config())
    return LlamaRotaryEmbedding(config=layer)


# ----------------------------------------------------------------------------- formats


def read_config(raw: dict[str, Any], where: str) -> Eagle3Config:
    """An :class:`Eagle3Config` from either hub layout's ``config.json``."""
    kind = raw.get("speculators_model_type")
    if kind is not None:
        if kind != "eagle3":
            raise ModelLoadError(
                f"{where} is a speculators {kind!r} checkpoint, not EAGLE-3",
                "point heads at an eagle3 speculator",
            )
        layer = raw.get("transformer_layer_config")
        if not isinstance(layer, dict):
            raise ModelLoadError(
                f"{where} has no transformer_layer_config", "a speculators config nests one"
            )
        top = raw
        # vLLM reads a missing norm_before_residual in this layout as True.
        before_residual = bool(raw.get("norm_before_residual", True))
        layout = "speculators"
    else:
        architectures = " ".join(raw.get("architectures") or [])
        if "Eagle3" not in architectures and "draft_vocab_size" not in raw:
            raise ModelLoadError(
                f"{where} is not an EAGLE-3 config (architectures {architectures or 'none'})",
                "point heads at an EAGLE-3 head (LlamaForCausalLMEagle3 or speculators eagle3)",
            )
        layer, top = raw, raw
        before_residual = bool(raw.get("norm_before_residual", False))
        layout = "flat"
    try:
        hidden = int(layer["hidden_size"])
        heads = int(layer["num_attention_heads"])
        theta, scaling = _rope(layer)
        aux = top.get("eagle_aux_hidden_state_layer_ids") or (top.get("eagle_config") or {}).get(
            "eagle_aux_hidden_state_layer_ids"
        )
        return Eagle3Config(
            hidden_size=hidden,
            intermediate_size=int(layer["intermediate_size"]),
            num_attention_heads=heads,
            num_key_value_heads=int(layer.get("num_key_value_heads") or heads),
            vocab_size=int(layer["vocab_size"]),
            draft_vocab_size=int(top.get("draft_vocab_size") or layer["vocab_size"]),
            target_hidden_size=int(top.get("target_hidden_size") or hidden),
            head_dim=layer.get("head_dim"),
            rms_norm_eps=float(layer.get("rms_norm_eps", 1e-6)),
            rope_theta=theta,
            rope_scaling=scaling,
            max_position_embeddings=int(layer.get("max_position_embeddings") or 32768),
            aux_layer_ids=tuple(int(i) for i in aux) if aux else None,
            norm_before_residual=before_residual,
            attention_bias=bool(layer.get("attention_bias", False)),
            layout=layout,
            extra={"speculators_config": raw.get("speculators_config")},
        )
    except KeyError as error:
        raise ModelLoadError(
            f"{where} lacks {error.args[0]!r}", "an EAGLE-3 config needs the layer's shape"
        ) from error


def _rope(layer: dict[str, Any]) -> tuple[float, dict[str, Any] | None]:
    """Rope theta and scaling, from the older keys or transformers 5's ``rope_parameters``."""
    params = layer.get("rope_parameters") or {}
    theta = float(layer.get("rope_theta") or params.get("rope_theta") or 10000.0)
    scaling = layer.get("rope_scaling")
    if scaling is None and params.get("rope_type", "default") != "default":
        scaling = {k: v for k, v in params.items() if k != "rope_theta"}
    return theta, scaling


def load_eagle3(source: str, local_only: bool = False) -> Eagle3Head:
    """An EAGLE-3 head from a folder or hub id in either layout (see the module docstring)."""
    folder = resolve_folder(source, "EAGLE-3 head", [CONFIG, *WEIGHT_FILES], local_only)
    config_path = folder / CONFIG
    if not config_path.is_file():
        raise ModelLoadError(f"{folder} has no {CONFIG}", "an EAGLE-3 folder needs its config.json")
    config = read_config(json.loads(config_path.read_text()), str(config_path))
    state = _read_weights(folder)
    if "fc.weight" not in state:
        raise ModelLoadError(f"{folder}: no fc.weight", "an EAGLE-3 head projects 3 layers by fc")
    aux = state["fc.weight"].shape[1] // config.target_hidden_size
    if config.aux_layer_ids is not None and len(config.aux_layer_ids) != aux:
        raise ModelLoadError(
            f"{folder}: fc reads {aux} layers, the config names {len(config.aux_layer_ids)}",
            "check eagle_aux_hidden_state_layer_ids",
        )
    config = replace(config, own_embeddings="embed_tokens.weight" in state)
    head = Eagle3Head(config)
    if config.aux_layer_ids is None and aux != 3:
        head.fc = nn.Linear(aux * config.target_hidden_size, config.hidden_size, bias=False)
    if "t2d" not in state:
        state["t2d"] = torch.ones(config.vocab_size, dtype=torch.bool)
    if "d2t" not in state:
        state["d2t"] = torch.zeros(config.draft_vocab_size, dtype=torch.long)
    try:
        head.load_state_dict(state, strict=True)
    except RuntimeError as error:
        first = str(error).strip().splitlines()
        detail = " ".join(line.strip() for line in first[:2])
        raise ModelLoadError(
            f"{folder}: weights do not fit the config: {detail[:300]}",
            "check the config against the checkpoint",
        ) from error
    return head.eval()


def _read_weights(folder: Path) -> dict[str, torch.Tensor]:
    out = {}
    for key, value in read_state(folder, WEIGHT_FILES, "EAGLE-3 folder").items():
        key = key.removeprefix("model.").replace("midlayer.", "layers.0.")
        if key == "d2t":
            out[key] = value.long()
        elif key == "t2d":
            out[key] = value.bool()
        else:
            out[key] = value.float()
    return out


def save_eagle3(
    head: Eagle3Head,
    folder: Path,
    verifier: str | None = None,
    verifier_architectures: list[str] | None = None,
    speculative_tokens: int = 3,
    layout: str = "speculators",
) -> Path:
    """Write ``head`` as a speculators ``eagle3`` checkpoint (``layout="flat"``: the EAGLE
    repository's ``LlamaForCausalLMEagle3`` layout, which tests use to cover both)."""
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    config = head.config
    layer = config.layer_config()
    if layout == "flat":
        raw: dict[str, Any] = layer | {
            "architectures": ["LlamaForCausalLMEagle3"],
            "draft_vocab_size": config.draft_vocab_size,
            "target_hidden_size": config.target_hidden_size,
            "norm_before_residual": config.norm_before_residual,
        }
        if config.aux_layer_ids is not None:
            raw["eagle_config"] = {"eagle_aux_hidden_state_layer_ids": list(config.aux_layer_ids)}
        prefix = "midlayer."
    else:
        raw = {
            "architectures": ["Eagle3Speculator"],
            "speculators_model_type": "eagle3",
            "speculators_version": SPECULATORS_VERSION,
            "transformer_layer_config": layer,
            "draft_vocab_size": config.draft_vocab_size,
            "norm_before_residual": config.norm_before_residual,
            "target_hidden_size": config.target_hidden_size,
            "eagle_aux_hidden_state_layer_ids": list(config.aux_layer_ids or ()) or None,
            "speculators_config": {
                "algorithm": "eagle3",
                "default_proposal_method": "greedy",
                "proposal_methods": [
                    {
                        "proposal_type": "greedy",
                        "speculative_tokens": speculative_tokens,
                        "verifier_accept_k": 1,
                        "accept_tolerance": 0.0,
                    }
                ],
                "verifier": {
                    "name_or_path": verifier,
                    "architectures": verifier_architectures or [],
                },
            },
            "torch_dtype": "float32",
        }
        prefix = "layers.0."
    (folder / CONFIG).write_text(json.dumps(raw, indent=2))
    state = {}
    # A full draft vocabulary needs no mapping, and vLLM rejects one it has no slot for.
    identity = config.draft_vocab_size == config.vocab_size and not bool(head.d2t.any())
    for key, value in head.state_dict().items():
        if identity and key in ("d2t", "t2d"):
            continue
        if key.startswith("layers.0."):
            key = prefix + key.removeprefix("layers.0.")
        state[key] = value.detach().contiguous()
    save_file(state, str(folder / WEIGHT_FILES[0]))
    return folder


def check_fits(
    head: Eagle3Head, hidden_size: int, vocab_size: int, num_layers: int, source: str
) -> None:
    """One-line errors when a head was made for another target."""
    config = head.config
    if config.target_hidden_size != hidden_size:
        raise ModelLoadError(
            f"EAGLE-3 head {source} reads target hidden size {config.target_hidden_size}, "
            f"the target has {hidden_size}",
            "use a head trained for this target",
        )
    if head.embed_tokens is None and config.hidden_size != hidden_size:
        raise ModelLoadError(
            f"EAGLE-3 head {source} has hidden size {config.hidden_size} and no embeddings of "
            f"its own; the target's are {hidden_size} wide",
            "use a head trained for this target",
        )
    if config.vocab_size != vocab_size:
        raise ModelLoadError(
            f"EAGLE-3 head {source} maps drafts to a {config.vocab_size}-token vocabulary, "
            f"the target has {vocab_size}",
            "use a head trained for this target",
        )
    top = int((torch.arange(config.draft_vocab_size) + head.d2t.cpu()).max())
    if top >= vocab_size:
        raise ModelLoadError(
            f"EAGLE-3 head {source}: d2t maps a draft token to id {top}, past the target's "
            f"{vocab_size}",
            "the head's d2t table does not belong to this target",
        )
    for layer in aux_layers(head, num_layers):
        if not 0 <= layer < num_layers:
            raise ModelLoadError(
                f"EAGLE-3 head {source} reads layer {layer}; the target has {num_layers}",
                "check eagle_aux_hidden_state_layer_ids",
            )


def aux_layers(head: Eagle3Head, num_layers: int) -> tuple[int, ...]:
    """Layers whose inputs the head reads: the config's, else vLLM's default (2, N/2, N-3)."""
    return head.config.aux_layer_ids or default_aux_layers(num_layers)


def default_aux_layers(num_layers: int) -> tuple[int, ...]:
    """vLLM's (2, N/2, N-3); shallow test models (under 6 layers) get (0, N/2, N-1)."""
    if num_layers >= 6:
        return (2, num_layers // 2, num_layers - 3)
    return (0, num_layers // 2, num_layers - 1)
