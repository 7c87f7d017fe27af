"""Training data for heads: the target's own answers to GSM8K training questions, with the
hidden states heads learn from, cached per question.

The questions (shipped in the package) go through the target's chat template with the
benchmark presets' instruction and the target answers greedily, ``batch_size`` at a time. The
same ``generate`` call records every layer for the prompt (its first step) and one position
per later step, so the features cost no extra target pass: the inputs of the ``layer_ids``
layers (EAGLE-3's features) and the final normed state (what the output layer reads: Medusa's
input, and EAGLE's regression target). One file per question under a folder keyed by the
target and the answer length only, so more questions reuse the ones answered before and an
interrupted collection resumes.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from specbench.heads.store import heads_dir, heads_key
from specbench.models.base import LanguageModel
from specbench.models.capabilities import internal_states

DATA = "gsm8k-train-target-answers"
INSTRUCTION = (
    "Solve the problem. Reason briefly, step by step, then end with 'The answer is N.'"
    "\n\nProblem: {question}"
)


@dataclass(frozen=True)
class _DataKey:
    answer_tokens: int


def features_folder(target_identity: dict[str, Any], answer_tokens: int) -> Path:
    """Where the answers and features of one target and answer length are cached."""
    return heads_dir() / f"{heads_key(target_identity, _DataKey(answer_tokens), DATA)}.features"


def questions(count: int) -> list[str]:
    from importlib.resources import files

    path = files("specbench.prompts.data").joinpath("gsm8k_train.jsonl")
    rows = path.read_text().splitlines()[:count]
    return [INSTRUCTION.format(question=json.loads(row)["question"]) for row in rows]


def collect(
    target: LanguageModel,
    texts: int,
    answer_tokens: int,
    layer_ids: tuple[int, ...],
    folder: Path,
    say: Callable[[str], None],
    batch_size: int = 8,
) -> list[dict[str, torch.Tensor]]:
    """Per question: ``tokens`` (prompt + the target's answer), ``aux`` (feature layers'
    inputs, ``[n - 1, 3H]``) and ``final`` (the target's normed last state, ``[n - 1, H]``),
    bfloat16, one cached file each."""
    states = internal_states(target, "head training")
    tokenizer = target.tokenizer
    folder.mkdir(parents=True, exist_ok=True)
    prompts = []
    for text in questions(texts):
        ids = tokenizer.chat_ids([{"role": "user", "content": text}])
        prompts.append(ids if ids is not None else tokenizer.encode(text))
    todo = [i for i in range(len(prompts)) if not (folder / f"{i:05d}.pt").is_file()]
    stop = sorted(tokenizer.eos_token_ids)
    for start in range(0, len(todo), batch_size):
        batch = todo[start : start + batch_size]
        say(f"target answers and features: question {start + 1}/{len(todo)} still to do")
        width = max(len(prompts[i]) for i in batch)
        # Left padding: the filler is masked out, any id does.
        input_ids = torch.full((len(batch), width), (stop or [0])[0], dtype=torch.long)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        for row, i in enumerate(batch):
            input_ids[row, width - len(prompts[i]) :] = torch.tensor(prompts[i])
            mask[row, width - len(prompts[i]) :] = 1
        out = states.generate_greedy_with_states(input_ids, mask, answer_tokens, stop)
        steps = out.hidden_states  # per generation step, per layer [B, T, H]
        for row, i in enumerate(batch):
            answer: list[int] = []
            for token in out.sequences[row, width:].tolist():
                answer.append(token)
                if token in stop:
                    break
            tokens = prompts[i] + answer
            usable = len(tokens) - 1  # positions with a feature: all but the last token
            first = width - len(prompts[i])

            saved = {
                "tokens": torch.tensor(tokens),
                "aux": torch.cat(
                    [_rows(steps, layer, row, first, usable) for layer in layer_ids], -1
                ).to(torch.bfloat16),
                "final": _rows(steps, len(steps[0]) - 1, row, first, usable).to(torch.bfloat16),
            }
            path = folder / f"{i:05d}.pt"
            partial = path.with_suffix(".partial")
            torch.save({k: v.cpu() for k, v in saved.items()}, partial)
            partial.replace(path)
    return [torch.load(folder / f"{i:05d}.pt") for i in range(len(prompts))]


def _rows(steps: Any, layer: int, row: int, first: int, usable: int) -> torch.Tensor:
    """One batch row's states of ``layer`` over a ``generate`` call: the prompt's positions
    from the first step, then one position per later step; the first ``usable`` of them."""
    parts = [steps[0][layer][row, first:]]
    parts += [step[layer][row, -1:] for step in steps[1:]]
    return torch.cat(parts)[:usable]
