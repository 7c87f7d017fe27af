"""Train Medusa heads on the CPU from the target's own outputs, cached and resumable.

Data: GSM8K training questions with their answers (shipped in the package), tokenized and
run through the target once each; the target's last hidden states and its own greedy next
tokens are cached per text on disk (the expensive part, resumable text by text). Head ``i``
learns, at position ``t``, the token the target itself predicts at ``t + i + 2``
(self-distillation). Heads start as Medusa's do: residual blocks at zero and the vocabulary
projection copied from the target's output layer, kept frozen (so a CPU step only trains
the residual blocks). Training checkpoints every 50 steps and resumes from there. A holdout
split (every tenth text) gives each head's top-1 accuracy.

Trained heads are folders in Medusa's hub layout under ``<cache>/heads/<key>``; the key
hashes the target's identity, the head shape, the data and the training settings.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch

from specbench.heads.medusa import (
    MedusaConfig,
    MedusaHeads,
    ResBlock,
    load_medusa,
    save_medusa,
)
from specbench.keyed_store import KeyedStore
from specbench.models.base import LanguageModel

HEADS_FORMAT = 1
DATA = "gsm8k-train"


def heads_dir() -> Path:
    from specbench.models.catalog import cache_root

    return cache_root() / "heads"


STORE = KeyedStore("head", heads_dir, "specbench heads list")


@dataclass(frozen=True)
class MedusaTraining:
    """What determines trained heads (besides the target)."""

    num_heads: int = 3
    num_layers: int = 1
    texts: int = 200
    max_tokens: int = 256
    steps: int = 300
    batch: int = 128
    lr: float = 1e-3
    seed: int = 0


def heads_key(target_identity: dict[str, Any], training: Any, kind: str = "medusa") -> str:
    """The cache key of heads of ``kind`` trained for a target with ``training`` (a
    dataclass of the settings that determine them)."""
    blob = json.dumps(
        {"format": HEADS_FORMAT, "kind": kind, "data": DATA, "target": target_identity}
        | asdict(training),
        sort_keys=True,
        default=str,
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:20]


def trained_folder(key: str) -> Path | None:
    """The folder of finished heads under ``key``, or ``None``."""
    folder = heads_dir() / key
    return folder if (folder / "meta.json").is_file() else None


def training_texts(tokenizer: Any, training: MedusaTraining) -> list[list[int]]:
    """Token ids of the first ``texts`` GSM8K training questions with their answers."""
    from importlib.resources import files

    path = files("specbench.data").joinpath("prompts/gsm8k_train.jsonl")
    texts: list[list[int]] = []
    for line in path.read_text().splitlines():
        if len(texts) >= training.texts:
            break
        row = json.loads(line)
        ids = tokenizer.encode(f"{row['question']}\n{row['answer']}")
        texts.append(ids[: training.max_tokens])
    return texts


def _features(
    target: LanguageModel,
    texts: list[list[int]],
    folder: Path,
    say: Callable[[str], None],
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(last hidden states [T, H] float16, greedy next tokens [T]) per text, cached."""
    module = target.model  # type: ignore[attr-defined]
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for index, ids in enumerate(texts):
        path = folder / f"{index:05d}.pt"
        if not path.is_file():
            if index % 10 == 0:
                say(f"target features: text {index + 1}/{len(texts)}")
            with torch.inference_mode():
                result = module(
                    torch.tensor([ids], device=target.device), output_hidden_states=True
                )
            hidden = result.hidden_states[-1][0].to(torch.float16).cpu()
            greedy = result.logits[0, :, : target.vocab_size].argmax(-1).cpu()
            partial = path.with_suffix(".partial")
            torch.save({"hidden": hidden, "greedy": greedy}, partial)
            partial.replace(path)
        saved = torch.load(path)
        out.append((saved["hidden"], saved["greedy"]))
    return out


def _pairs(
    data: list[tuple[torch.Tensor, torch.Tensor]], head: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Inputs (hidden at t) and labels (the target's token at t + head + 2) of one head."""
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
    key = heads_key(target_identity, training)
    folder = heads_dir() / key
    if force:
        shutil.rmtree(folder, ignore_errors=True)
    if trained_folder(key) is not None:
        return folder, json.loads((folder / "meta.json").read_text())
    work = heads_dir() / f"{key}.work"
    texts = training_texts(target.tokenizer, training)
    data = _features(target, texts, work / "features", say)
    holdout = [d for i, d in enumerate(data) if i % 10 == 9]
    train = [d for i, d in enumerate(data) if i % 10 != 9]
    module = target.model  # type: ignore[attr-defined]
    hidden_size = int(module.config.hidden_size)
    lm_head = module.get_output_embeddings().weight.detach().float().cpu()
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
    checkpoint = work / "checkpoint.pt"
    step = 0
    if checkpoint.is_file():
        saved = torch.load(checkpoint)
        heads.load_state_dict(saved["heads"])
        optimizer.load_state_dict(saved["optimizer"])
        step = int(saved["step"])
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
            torch.save(
                {"heads": heads.state_dict(), "optimizer": optimizer.state_dict(), "step": step},
                checkpoint,
            )
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
    partial = heads_dir() / f"{key}.partial"
    shutil.rmtree(partial, ignore_errors=True)
    save_medusa(heads, partial, str(target_identity.get("model", "")))
    (partial / "meta.json").write_text(json.dumps(meta, indent=2, default=str))
    shutil.rmtree(folder, ignore_errors=True)
    partial.replace(folder)
    shutil.rmtree(work, ignore_errors=True)
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
