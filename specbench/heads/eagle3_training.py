"""Train an EAGLE-3 head on the CPU from the target's own answers, cached and resumable.

Data: GSM8K training questions (shipped in the package) in the target's chat template,
answered by the target itself (greedy, batched). The same ``generate`` call records what the
head learns from at every position: the inputs of the three feature layers and the target's
final (normed) hidden state, whose projection by the target's output layer is the target's
next-token distribution. Each answered question is one file (resumable question by
question); training checkpoints every 50 steps and resumes from there.

The head: the target's embedding (frozen, not saved), ``fc`` starting as "pass the highest
feature layer through", ``lm_head`` and ``norm`` starting as the target's (rows of the draft
vocabulary), the decoder layer's output projections at zero. The draft vocabulary is the
``draft_vocab`` most frequent tokens of the data (then the lowest ids), as EAGLE-3 does.

The loss is EAGLE's, over ``ttt_steps`` steps of training-time test (the head fed its own
output, with the attention a draft chain has at inference): cross-entropy against the
target's distribution over the draft vocabulary plus ``regression_weight`` times a smooth-L1
regression of the head's normed state onto the target's, step ``j`` weighted ``0.8**j``.
A holdout split (every tenth question) gives each step's top-1 agreement with the target.
"""

from __future__ import annotations

import math
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch

from specbench.heads.data import collect, features_folder
from specbench.heads.eagle3 import (
    Attention,
    Eagle3Config,
    Eagle3Head,
    default_aux_layers,
    load_eagle3,
    save_eagle3,
)
from specbench.heads.store import (
    HEADS_FORMAT,
    Checkpoint,
    heads_dir,
    heads_key,
    publish,
    stored_meta,
)
from specbench.models.base import LanguageModel
from specbench.models.capabilities import internal_states


@dataclass(frozen=True)
class Eagle3Training:
    """What determines a trained head (besides the target)."""

    draft_vocab: int = 8192
    intermediate_size: int = 2048
    texts: int = 160
    answer_tokens: int = 160
    steps: int = 400
    sequences_per_step: int = 2
    ttt_steps: int = 3
    lr: float = 1e-3
    regression_weight: float = 0.2
    seed: int = 0


def draft_vocabulary(data: list[dict[str, torch.Tensor]], size: int, vocab: int) -> torch.Tensor:
    """Target ids of the draft vocabulary, ascending: the most frequent tokens of the data,
    then the lowest ids not yet in."""
    counts: Counter[int] = Counter()
    for item in data:
        counts.update(item["tokens"].tolist())
    size = min(size, vocab)
    chosen = [token for token, _ in counts.most_common(size)]
    taken = set(chosen)
    filler = (i for i in range(vocab) if i not in taken)
    while len(chosen) < size:
        chosen.append(next(filler))
    return torch.tensor(sorted(chosen), dtype=torch.long)


def initial_head(
    target: LanguageModel, training: Eagle3Training, layer_ids: tuple[int, ...], ids: torch.Tensor
) -> Eagle3Head:
    states = internal_states(target, "EAGLE-3 training")
    shape = states.architecture()
    hidden = shape.hidden_size
    head_config = Eagle3Config(
        hidden_size=shape.hidden_size,
        intermediate_size=training.intermediate_size,
        num_attention_heads=shape.num_attention_heads,
        num_key_value_heads=shape.num_key_value_heads,
        vocab_size=shape.vocab_size,
        draft_vocab_size=len(ids),
        target_hidden_size=shape.hidden_size,
        head_dim=shape.head_dim,
        rms_norm_eps=shape.rms_norm_eps,
        rope_theta=shape.rope_theta,
        max_position_embeddings=shape.max_position_embeddings,
        aux_layer_ids=layer_ids,
        norm_before_residual=False,
    )
    generator = torch.Generator().manual_seed(training.seed)
    head = Eagle3Head(head_config)
    lm_head = states.output_weight().detach().float().cpu()
    final_norm = states.final_norm_weight()
    with torch.no_grad():
        for name, parameter in head.named_parameters():
            if name.endswith("norm.weight"):
                parameter.fill_(1.0)
            else:
                parameter.normal_(0.0, 0.02, generator=generator)
        for linear in (head.layer.self_attn.o_proj, head.layer.mlp.down_proj):
            linear.weight.zero_()
        head.fc.weight.zero_()
        head.fc.weight[:, 2 * hidden : 3 * hidden] = torch.eye(hidden)
        head.lm_head.weight.copy_(lm_head[ids])
        if final_norm is not None:
            head.norm.weight.copy_(final_norm.detach().float().cpu())
        head.d2t.copy_(ids - torch.arange(len(ids)))
        head.t2d.zero_()
        head.t2d[ids] = True
    return head


class _Sequence:
    """One training sequence as tensors the training step reads."""

    def __init__(self, item: dict[str, torch.Tensor], draft_index: torch.Tensor) -> None:
        self.tokens = item["tokens"]
        self.aux = item["aux"].float()
        self.final = item["final"].float()
        self.draft_index = draft_index  # target id -> draft id, -1 outside


def ttt_losses(
    head: Eagle3Head,
    embed: Callable[[torch.Tensor], torch.Tensor],
    target_lm_head: torch.Tensor,
    sequence: _Sequence,
    steps: int,
    regression_weight: float,
) -> tuple[torch.Tensor, list[tuple[int, int]]]:
    """The loss of one sequence over ``steps`` steps of training-time test, and per step
    (top-1 agreements with the target, positions scored)."""
    layer = head.layer
    attention = layer.self_attn
    tokens, final = sequence.tokens, sequence.final
    length = final.shape[0]  # positions 0 .. n - 2
    hidden = head.combine(sequence.aux)
    keys: list[torch.Tensor] = []
    values: list[torch.Tensor] = []
    total = torch.zeros(())
    agreement: list[tuple[int, int]] = []
    for step in range(steps):
        scored = length - 1 - step  # positions t whose target state t + 1 + step exists
        if scored <= 0:
            break
        index = torch.arange(length).clamp(max=len(tokens) - 2 - step) + 1 + step
        embeds = embed(tokens[index])
        normed = layer.hidden_norm(hidden)
        residual = normed if layer.norm_before_residual else hidden
        x = torch.cat([layer.input_layernorm(embeds), normed], dim=-1)
        out, k, v = _ttt_attention(attention, head, x, step, keys, values)
        keys.append(k)
        values.append(v)
        state = residual + out
        state = state + layer.mlp(layer.post_attention_layernorm(state))
        rows = slice(0, scored)
        logits = head.draft_logits(state[rows])
        reference = final[1 + step : 1 + step + scored]
        with torch.no_grad():
            target_probs = torch.softmax(reference @ target_lm_head.T, dim=-1)
            target_probs = target_probs / target_probs.sum(-1, keepdim=True)
        cross_entropy = -(target_probs * torch.log_softmax(logits, -1)).sum(-1).mean()
        regression = torch.nn.functional.smooth_l1_loss(head.norm(state[rows]), reference)
        total = total + 0.8**step * (cross_entropy + regression_weight * regression)
        with torch.no_grad():
            agree = int((logits.argmax(-1) == target_probs.argmax(-1)).sum())
        agreement.append((agree, scored))
        hidden = state
    return total, agreement


def _ttt_attention(
    attention: Attention,
    head: Eagle3Head,
    x: torch.Tensor,
    step: int,
    keys: list[torch.Tensor],
    values: list[torch.Tensor],
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Step ``step``'s attention: query ``t`` (position ``t + step``) reads the step-0 keys
    of positions ``<= t`` (the committed pairs at inference) and, of each later step, only
    its own row (the drafts before it in its chain)."""
    length = x.shape[0]
    heads, kv_heads, dim = attention.heads, attention.kv_heads, attention.dim
    q, k, v = attention.project(x, head.rope(torch.arange(length) + step, x.dtype))
    groups = heads // kv_heads
    all_keys = [kk.repeat_interleave(groups, 0) for kk in [*keys, k]]
    all_values = [vv.repeat_interleave(groups, 0) for vv in [*values, v]]
    scale = 1.0 / math.sqrt(dim)
    causal = torch.ones(length, length, dtype=torch.bool).tril()
    scores = [(q @ all_keys[0].transpose(1, 2) * scale).masked_fill(~causal, float("-inf"))]
    scores += [(q * kk).sum(-1, keepdim=True) * scale for kk in all_keys[1:]]
    weights = torch.softmax(torch.cat(scores, dim=-1), dim=-1)
    out = weights[..., :length] @ all_values[0]
    for i, vv in enumerate(all_values[1:]):
        out = out + weights[..., length + i : length + i + 1] * vv
    result = attention.o_proj(out.transpose(0, 1).reshape(length, -1))
    return result, k, v


def train_eagle3(
    target: LanguageModel,
    target_identity: dict[str, Any],
    training: Eagle3Training,
    force: bool = False,
    say: Callable[[str], None] = lambda message: None,
) -> tuple[Path, dict[str, Any]]:
    """Train (or find) an EAGLE-3 head for ``target``; returns its folder and metadata."""
    key = heads_key(target_identity, training, kind="eagle3")
    found = stored_meta(key, force)
    if found is not None:
        return heads_dir() / key, found
    started = time.perf_counter()
    states = internal_states(target, "EAGLE-3 training")
    shape = states.architecture()
    layer_ids = default_aux_layers(shape.num_layers)
    folder_ = features_folder(target_identity, training.answer_tokens)
    data = collect(target, training.texts, training.answer_tokens, layer_ids, folder_, say)
    collected = time.perf_counter()
    ids = draft_vocabulary(data, training.draft_vocab, shape.vocab_size)
    head = initial_head(target, training, layer_ids, ids)
    draft_index = torch.full((shape.vocab_size,), -1, dtype=torch.long)
    draft_index[ids] = torch.arange(len(ids))
    sequences = [_Sequence(item, draft_index) for item in data]
    holdout = [s for i, s in enumerate(sequences) if i % 10 == 9]
    train = [s for i, s in enumerate(sequences) if i % 10 != 9]
    embedding = states.input_embeddings()

    def embed(tokens: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():  # the target's table: looked up, never trained
            rows: torch.Tensor = embedding(tokens.to(target.device))
            return rows.float().cpu()

    target_lm_head = head.lm_head.weight.detach().clone()
    trainable = [p for name, p in head.named_parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=training.lr, weight_decay=0.0)
    checkpoint = Checkpoint(key)
    step = checkpoint.resume(head, optimizer)
    if step:
        say(f"resuming EAGLE-3 training at step {step}")
    generator = torch.Generator().manual_seed(training.seed + step)
    losses: list[float] = []
    while step < training.steps:
        for group in optimizer.param_groups:
            group["lr"] = _learning_rate(training, step)
        optimizer.zero_grad()
        picks = torch.randint(len(train), (training.sequences_per_step,), generator=generator)
        loss_value = 0.0
        for pick in picks.tolist():
            loss, _ = ttt_losses(
                head,
                embed,
                target_lm_head,
                train[pick],
                training.ttt_steps,
                training.regression_weight,
            )
            (loss / len(picks)).backward()  # type: ignore[no-untyped-call]
            loss_value += float(loss.detach()) / len(picks)
        torch.nn.utils.clip_grad_norm_(trainable, 1.0)
        optimizer.step()
        step += 1
        losses.append(loss_value)
        if step % 10 == 0 or step == training.steps:
            recent = sum(losses[-10:]) / len(losses[-10:])
            say(f"training EAGLE-3 head: step {step}/{training.steps}, loss {recent:.3f}")
        if step % 50 == 0 or step == training.steps:
            checkpoint.save(head, optimizer, step)
    accuracy = holdout_agreement(head, embed, target_lm_head, holdout, training)
    finished = time.perf_counter()
    meta = {
        "key": key,
        "kind": "eagle3",
        "format": HEADS_FORMAT,
        "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "target": target_identity,
        "data": "gsm8k-train-target-answers",
        "training": asdict(training),
        "aux_layer_ids": list(layer_ids),
        "train_texts": len(train),
        "holdout_texts": len(holdout),
        "train_positions": sum(s.final.shape[0] for s in train),
        "holdout_top1": accuracy,
        "shape": f"1 layer, MLP {training.intermediate_size}, draft vocab {len(ids)}",
        "final_loss": sum(losses[-10:]) / len(losses[-10:]) if losses else None,
        "seconds": {
            "features": round(collected - started, 1),
            "training": round(finished - collected, 1),
        },
    }
    verifier = str(target_identity.get("model", "")) or None
    architectures = list(shape.class_names)
    folder = publish(key, lambda out: save_eagle3(head, out, verifier, architectures), meta)
    load_eagle3(str(folder))  # what was written loads back
    return folder, meta


def _learning_rate(training: Eagle3Training, step: int) -> float:
    """Linear warm-up over the first 5% of steps, then cosine decay to a tenth."""
    warmup = max(1, training.steps // 20)
    if step < warmup:
        return training.lr * (step + 1) / warmup
    progress = (step - warmup) / max(1, training.steps - warmup)
    return training.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


def holdout_agreement(
    head: Eagle3Head,
    embed: Callable[[torch.Tensor], torch.Tensor],
    target_lm_head: torch.Tensor,
    holdout: list[_Sequence],
    training: Eagle3Training,
) -> list[float]:
    """Per training-time-test step, how often the head's top-1 is the target's."""
    totals = [[0, 0] for _ in range(training.ttt_steps)]
    with torch.no_grad():
        for sequence in holdout:
            _, agreement = ttt_losses(
                head, embed, target_lm_head, sequence, training.ttt_steps, 0.0
            )
            for step, (agree, scored) in enumerate(agreement):
                totals[step][0] += agree
                totals[step][1] += scored
    return [round(agree / scored, 4) if scored else 0.0 for agree, scored in totals]
