"""Tiny random Hugging Face models and tokenizers, built in the test run (no download)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
CORPUS = [
    "the quick brown fox jumps over the lazy dog",
    "def add(a, b):\n    return a + b\n",
    "speculative decoding drafts tokens and verifies them in one pass",
    "question: what is two plus two? answer: four",
] * 25


def build_tokenizer(vocab_size: int = 300, corpus: list[str] | None = None) -> Any:
    """A byte-level BPE tokenizer with a chat template, like Qwen's but tiny."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIALS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(corpus or CORPUS, trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>"
    )
    fast.chat_template = CHAT_TEMPLATE
    return fast


def build_model(arch: str, vocab_size: int, seed: int = 0, layers: int = 2, heads: int = 4) -> Any:
    """A tiny random causal LM of a real architecture (llama or qwen2), fp32, eval mode.

    ``heads=2`` gives head_dim 32, the smallest vLLM's CPU attention supports."""
    from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

    common = dict(
        vocab_size=vocab_size,
        hidden_size=64,  # multiples of 64: bitsandbytes 4-bit CPU kernels need them
        intermediate_size=128,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=2,
        max_position_embeddings=1024,
        tie_word_embeddings=False,
    )
    torch.manual_seed(seed)
    if arch == "llama":
        model = LlamaForCausalLM(LlamaConfig(**common))
    elif arch == "qwen2":
        model = Qwen2ForCausalLM(Qwen2Config(**common))
    else:
        raise ValueError(arch)
    # Sharper than the default init, so greedy choices are not near-ties everywhere.
    with torch.no_grad():
        model.lm_head.weight.mul_(8.0)
    return model.eval()


def perturbed_copy(model: Any, scale: float, seed: int = 1) -> Any:
    """A draft: the target's weights plus Gaussian noise (acceptance well above zero)."""
    import copy

    draft = copy.deepcopy(model)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in draft.parameters():
            noise = torch.randn(parameter.shape, generator=generator)
            parameter.add_(scale * parameter.std().clamp(min=1e-3) * noise)
    return draft


def save(model: Any, tokenizer: Any, folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def write_gguf(model: Any, tokenizer: Any, path: Path) -> Path:
    """Write a qwen2 model and its byte-level BPE tokenizer as an F32 GGUF file."""
    import gguf

    config = model.config
    writer = gguf.GGUFWriter(str(path), "qwen2")
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(config.num_attention_heads)
    writer.add_head_count_kv(config.num_key_value_heads)
    rope = getattr(config, "rope_parameters", None) or {}
    writer.add_rope_freq_base(float(rope.get("rope_theta", getattr(config, "rope_theta", 10000.0))))
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    writer.add_file_type(gguf.LlamaFileType.ALL_F32)
    vocab = tokenizer.get_vocab()
    tokens = [t for t, _ in sorted(vocab.items(), key=lambda item: item[1])]
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("qwen2")
    writer.add_token_list(tokens)
    writer.add_token_types(
        [gguf.TokenType.CONTROL if t in SPECIALS else gguf.TokenType.NORMAL for t in tokens]
    )
    merges = json.loads(tokenizer.backend_tokenizer.to_str())["model"]["merges"]
    writer.add_token_merges([" ".join(m) if isinstance(m, list) else m for m in merges])
    writer.add_eos_token_id(vocab["<|im_end|>"])
    writer.add_pad_token_id(vocab["<|endoftext|>"])
    writer.add_chat_template(tokenizer.chat_template)
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.QWEN2, config.num_hidden_layers)
    for name, tensor in model.state_dict().items():
        base, suffix = name.rsplit(".", 1)
        writer.add_tensor(f"{names.get_name(base)}.{suffix}", tensor.float().numpy())
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def eagle3_echo_head(target: Any, layers: tuple[int, ...], mix: float = 0.1) -> Any:
    """A head that passes the highest feature through to the target's own output layer:
    it guesses what the target would say at the *previous* position, often right on a
    12-token target, often wrong, so drafts are both accepted and rejected. ``mix`` scales
    what its own layer adds (its output projections)."""
    from specbench.heads.eagle3 import Eagle3Config, Eagle3Head

    config = target.config
    hidden, vocab = config.hidden_size, config.vocab_size
    head = Eagle3Head(
        Eagle3Config(
            hidden_size=hidden,
            intermediate_size=2 * hidden,
            num_attention_heads=config.num_attention_heads,
            num_key_value_heads=config.num_key_value_heads,
            vocab_size=vocab,
            draft_vocab_size=vocab,
            target_hidden_size=hidden,
            rms_norm_eps=config.rms_norm_eps,
            max_position_embeddings=config.max_position_embeddings,
            aux_layer_ids=layers,
        )
    )
    torch.manual_seed(0)
    with torch.no_grad():
        for parameter in head.parameters():
            parameter.normal_(0, 0.02)
        for name, parameter in head.named_parameters():
            if name.endswith("norm.weight"):
                parameter.fill_(1.0)
        head.layers[0].self_attn.o_proj.weight.mul_(mix)
        head.layers[0].mlp.down_proj.weight.mul_(mix)
        head.fc.weight.zero_()
        head.fc.weight[:, 2 * hidden :] = torch.eye(hidden)
        head.lm_head.weight.copy_(target.lm_head.weight)
        head.norm.weight.copy_(target.model.norm.weight)
    return head.eval()


def copy_model(vocab_size: int, layers: int = 4) -> Any:
    """A llama whose layers add nothing and whose output layer is its embedding: greedy
    decoding repeats the last token, so what a draft must guess is known."""
    model = build_model("llama", vocab_size, seed=0, layers=layers, heads=2)
    with torch.no_grad():
        for layer in model.model.layers:
            layer.self_attn.o_proj.weight.zero_()
            layer.mlp.down_proj.weight.zero_()
        model.lm_head.weight.copy_(model.model.embed_tokens.weight * 50)
    return model


def tiny_gguf_folder(folder: Path) -> Path:
    """A folder holding ``tiny.gguf``: a tiny random Qwen2 model with its tokenizer, for the
    real llama-server (the same weights every time)."""
    tokenizer = build_tokenizer()
    model = build_model("qwen2", len(tokenizer), seed=0)
    write_gguf(model, tokenizer, folder / "tiny.gguf")
    return folder
