"""Train Medusa heads on the CPU from the target's own outputs, cached and resumable.

Data: the target's own answers to GSM8K training questions with its final states, from the
cache :mod:`specbench.heads.data` shares with EAGLE-3 training (the expensive part, resumable
question by question). Head ``i`` learns, at position ``t``, the token at ``t + i + 2``: in
the answers, the target's own greedy choice (self-distillation). Heads start as Medusa's do:
residual blocks at zero and the vocabulary projection copied from the target's output layer,
kept frozen (so a CPU step only trains the residual blocks). Training checkpoints every 50
steps and resumes from there. A holdout split (every tenth question) gives each head's top-1
accuracy.

Trained heads are folders in Medusa's hub layout under ``<cache>/heads/<key>``; the key
hashes the target's identity, the head shape, the data and the training settings.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch

from specbench.heads.data import DATA, collect, features_folder
from specbench.heads.medusa import (
    MedusaConfig,
    MedusaHeads,
    ResBlock,
    load_medusa,
    save_medusa,
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
class MedusaTraining:
    """What determines trained heads (besides the target)."""

    num_heads: int = 3
    num_layers: int = 1
    texts: int = 200
    answer_tokens: int = 160
    steps: int = 300
    batch: int = 128
    lr: float = 1e-3
    seed: int = 0
    data: str = DATA


def _medusa_data(
    target: LanguageModel, training: MedusaTraining, identity: dict[str, Any], say: Any
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(final states [n - 1, H], the token after each [n - 1]) per answered question, from the
    shared cache of the target's answers (the same files EAGLE-3 training reads)."""
    from specbench.heads.eagle3 import default_aux_layers

    shape = internal_states(target, "Medusa training").architecture()
    layers = default_aux_layers(shape.num_layers)
    folder = features_folder(identity, training.answer_tokens)
    items = collect(target, training.texts, training.answer_tokens, layers, folder, say)
    return [(item["final"], item["tokens"][1:]) for item in items]


def _pairs(
    data: list[tuple[torch.Tensor, torch.Tensor]], head: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Inputs (state at t) and labels (the token at t + head + 2) of one head; ``after[t]``
    is the token after position ``t``, the target's own greedy choice in its answers."""
    xs, ys = [], []
    for hidden, greedy in data:
        shift = head + 1
        if len(greedy) > shift:
            xs.append(hidden[: len(greedy) - shift])
            ys.append(greedy[shift:])
    return torch.cat(xs).float(), torch.cat(ys)


def train_medusa(
    target: LanguageModel,
    target_identity: dict[str, Any],
    training: MedusaTraining,
    force: bool = False,
    say: Callable[[str], None] = lambda message: None,
) -> tuple[Path, dict[str, Any]]:
    """Train (or find) heads for ``target``; returns their folder and metadata."""
    key = heads_key(target_identity, training, kind="medusa")
    found = stored_meta(key, force)
    if found is not None:
        return heads_dir() / key, found
    data = _medusa_data(target, training, target_identity, say)
    holdout = [d for i, d in enumerate(data) if i % 10 == 9]
    train = [d for i, d in enumerate(data) if i % 10 != 9]
    states = internal_states(target, "Medusa training")
    hidden_size = states.architecture().hidden_size
    lm_head = states.output_weight().detach().float().cpu()
    config = MedusaConfig(
        training.num_heads, training.num_layers, hidden_size, lm_head.shape[0], None
    )
    heads = MedusaHeads(config)
    with torch.no_grad():
        for module_ in heads.modules():
            if isinstance(module_, ResBlock):
                module_.linear.weight.zero_()
                module_.linear.bias.zero_()
            elif isinstance(module_, torch.nn.Linear) and module_.out_features == lm_head.shape[0]:
                module_.weight.copy_(lm_head)
                module_.weight.requires_grad_(False)
    trainable = [p for p in heads.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=training.lr)
    checkpoint = Checkpoint(key)
    step = checkpoint.resume(heads, optimizer)
    if step:
        say(f"resuming training at step {step}")
    pairs = [_pairs(train, i) for i in range(training.num_heads)]
    generator = torch.Generator().manual_seed(training.seed + step)
    losses: list[float] = []
    while step < training.steps:
        optimizer.zero_grad()
        total = torch.zeros(())
        for i, (xs, ys) in enumerate(pairs):
            pick = torch.randint(len(ys), (training.batch,), generator=generator)
            logits = heads.heads[i](xs[pick])
            # Nearer heads matter more (Medusa weighs head i by 0.8^i).
            total = total + 0.8**i * torch.nn.functional.cross_entropy(logits, ys[pick])
        total.backward()  # type: ignore[no-untyped-call]
        optimizer.step()
        step += 1
        losses.append(float(total.detach()))
        if step % 25 == 0 or step == training.steps:
            say(f"training Medusa heads: step {step}/{training.steps}, loss {losses[-1]:.3f}")
        if step % 50 == 0 or step == training.steps:
            checkpoint.save(heads, optimizer, step)
    accuracy = _holdout_accuracy(heads, holdout, training.num_heads)
    meta = {
        "key": key,
        "kind": "medusa",
        "format": HEADS_FORMAT,
        "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "target": target_identity,
        "data": DATA,
        "training": asdict(training),
        "train_texts": len(train),
        "holdout_texts": len(holdout),
        "holdout_top1": accuracy,
        "shape": f"{training.num_heads} heads x {training.num_layers} blocks",
        "final_loss": losses[-1] if losses else None,
    }
    base_model = str(target_identity.get("model", ""))
    folder = publish(key, lambda out: save_medusa(heads, out, base_model), meta)
    load_medusa(str(folder))  # what was written loads back
    return folder, meta


def _holdout_accuracy(
    heads: MedusaHeads, holdout: list[tuple[torch.Tensor, torch.Tensor]], count: int
) -> list[float | None]:
    accuracy: list[float | None] = []
    with torch.inference_mode():
        for i in range(count):
            if not holdout:
                accuracy.append(None)
                continue
            xs, ys = _pairs(holdout, i)
            accuracy.append(float((heads.heads[i](xs).argmax(-1) == ys).float().mean()))
    return accuracy
