"""Dummy models: real architectures at real shapes with random weights, for timing only.

Weights are created directly on the target device in the requested dtype (no download, no
checkpoint on disk), so an 8B-shaped model is ready in seconds. The tokenizer maps bytes to
ids. Their outputs mean nothing: records mark them ``dummy``, and speculative runs on them
use synthetic acceptance to measure speed against acceptance.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from specbench.models.hf.library import require_transformers
from specbench.models.hf.loading import checked, fast_kernels
from specbench.models.hf.model import HFLanguageModel
from specbench.models.hf.tokenizer import HFTokenizer
from specbench.models.specs import DummyModelSpec, packs_for_few_rows

# Shapes of real checkpoints (from their config.json), keyed by a short name.
ARCHITECTURES: dict[str, dict[str, Any]] = {
    "llama-3.1-8b": dict(
        model_type="llama", vocab_size=128256, hidden_size=4096, intermediate_size=14336,
        num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=8,
        rope_theta=500000.0, rms_norm_eps=1e-5, tie_word_embeddings=False,
    ),
    "llama-3.2-3b": dict(
        model_type="llama", vocab_size=128256, hidden_size=3072, intermediate_size=8192,
        num_hidden_layers=28, num_attention_heads=24, num_key_value_heads=8,
        rope_theta=500000.0, rms_norm_eps=1e-5, tie_word_embeddings=True,
    ),
    "llama-3.2-1b": dict(
        model_type="llama", vocab_size=128256, hidden_size=2048, intermediate_size=8192,
        num_hidden_layers=16, num_attention_heads=32, num_key_value_heads=8,
        rope_theta=500000.0, rms_norm_eps=1e-5, tie_word_embeddings=True,
    ),
    "qwen2.5-7b": dict(
        model_type="qwen2", vocab_size=152064, hidden_size=3584, intermediate_size=18944,
        num_hidden_layers=28, num_attention_heads=28, num_key_value_heads=4,
        rope_theta=1000000.0, rms_norm_eps=1e-6, tie_word_embeddings=False,
    ),
    "qwen2.5-1.5b": dict(
        model_type="qwen2", vocab_size=151936, hidden_size=1536, intermediate_size=8960,
        num_hidden_layers=28, num_attention_heads=12, num_key_value_heads=2,
        rope_theta=1000000.0, rms_norm_eps=1e-6, tie_word_embeddings=True,
    ),
    "qwen2.5-0.5b": dict(
        model_type="qwen2", vocab_size=151936, hidden_size=896, intermediate_size=4864,
        num_hidden_layers=24, num_attention_heads=14, num_key_value_heads=2,
        rope_theta=1000000.0, rms_norm_eps=1e-6, tie_word_embeddings=True,
    ),
    # Small shapes for CPU runs and tests: the same code paths, in milliseconds.
    "tiny-llama": dict(
        model_type="llama", vocab_size=512, hidden_size=64, intermediate_size=128,
        num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
        rope_theta=10000.0, rms_norm_eps=1e-5, tie_word_embeddings=False,
    ),
    "tiny-llama-draft": dict(
        model_type="llama", vocab_size=512, hidden_size=32, intermediate_size=64,
        num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1,
        rope_theta=10000.0, rms_norm_eps=1e-5, tie_word_embeddings=False,
    ),
}  # fmt: skip


class ByteTokenizer:
    """Bytes to ids 3..258 (0 pad, 1 begin, 2 end): enough to feed prompts to dummy models."""

    OFFSET = 3
    EOS = 2

    def __init__(self, vocab_size: int) -> None:
        if vocab_size < 259:
            raise ValueError("a byte tokenizer needs a vocabulary of at least 259 ids")
        self.vocab_size = vocab_size
        self.pad_token_id = 0
        self.eos_token_id = self.EOS
        self.chat_template = None

    def __len__(self) -> int:
        return 256 + self.OFFSET

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        return [1] + [b + self.OFFSET for b in text.encode("utf-8")]

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = True) -> str:
        data = bytes(i - self.OFFSET for i in ids if self.OFFSET <= i < 256 + self.OFFSET)
        return data.decode("utf-8", errors="replace")

    def get_vocab(self) -> dict[str, int]:
        vocab = {"<pad>": 0, "<s>": 1, "</s>": 2}
        vocab.update({f"<0x{b:02X}>": b + self.OFFSET for b in range(256)})
        return vocab

    @property
    def bos_token(self) -> str:
        return "<s>"

    @property
    def eos_token(self) -> str:
        return "</s>"

    pad_token = "<pad>"
    unk_token = None


def dummy_shape(spec: DummyModelSpec) -> dict[str, Any]:
    """A dummy spec's config values: the named architecture plus the spec's overrides."""
    return {**ARCHITECTURES[spec.architecture], **spec.overrides}


def dummy_tokenizer(spec: DummyModelSpec) -> HFTokenizer:
    """The byte tokenizer over the spec's vocabulary (no transformers config needed)."""
    return HFTokenizer(ByteTokenizer(int(dummy_shape(spec)["vocab_size"])))


def dummy_config(spec: DummyModelSpec) -> Any:
    """The transformers config of a dummy spec: a named architecture plus overrides."""
    transformers = require_transformers()
    values = dummy_shape(spec)
    values["max_position_embeddings"] = spec.max_positions
    model_type = values.pop("model_type")
    config = transformers.AutoConfig.for_model(model_type, **values)
    return config


def load_dummy_model(spec: DummyModelSpec, role: str = "target") -> HFLanguageModel:
    """Random weights at the spec's shape, created on the device in the spec's dtype;
    ``role`` chooses specbench's kernel layout as for
    :func:`~specbench.models.hf.loading.load_hf_model`."""
    from specbench.models.hf.loading import resolve_device, resolve_dtype

    transformers = require_transformers()
    device = resolve_device(spec)
    dtype = resolve_dtype(spec, device)
    config = dummy_config(spec)
    if spec.batch_invariant:
        config._attn_implementation = "eager"
    torch.manual_seed(spec.seed)
    default_dtype = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            model = transformers.AutoModelForCausalLM.from_config(config)
    finally:
        torch.set_default_dtype(default_dtype)
    model.eval()
    few_rows = packs_for_few_rows(spec.linear_layout, role)
    kernels = fast_kernels(model, spec.batch_invariant, spec.prepack, spec.linear_kernel, few_rows)
    tokenizer = dummy_tokenizer(spec)
    parameters = sum(p.numel() for p in model.parameters())
    info = {
        "dummy": True,
        "weights": "random",
        "architecture": spec.architecture,
        "overrides": dict(spec.overrides),
        "bytes": parameters * torch.finfo(dtype).bits // 8,
        "batch_invariant": spec.batch_invariant,
        **kernels,
    }
    return checked(HFLanguageModel(model, tokenizer, name=f"dummy:{spec.architecture}", info=info))
