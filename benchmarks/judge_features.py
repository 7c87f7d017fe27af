"""Which features let an AutoJudge judge rank mismatches? A table of validation ROC-AUCs.

Reads a trained judge's mined data (``<cache>/judges/<key>/mined.pt`` and ``examples.jsonl``:
the target's and the draft's hidden states, the target's confidence at the mismatch when the
judge read it, and each mismatch's tokens), or a mining cache
folder (``<cache>/judges/mined/<key>``, every prompt mined so far, also while mining runs),
and trains the same classifier on every feature set, with the same validation (nested K-fold
over prompts) and C grid. Nothing runs the models: the target's HF folder gives the tokenizer
and the hidden size.

    python benchmarks/judge_features.py --judge KEY \
        --model-dir ~/.cache/specbench/models/qwen2.5-coder-1.5b/hf

``--choose`` adds a row: the best of ``--sets`` chosen together with C inside each fold (the
judge's ``feature_sets``), an honest figure for picking a set; the rows above it each flatter
the best one, which is picked after the fact.

``--curve 100,200,300`` prints a learning curve instead: the first feature set of ``--sets``
trained on the first N training prompts (by the number that ends each prompt id, e.g.
``gsm8k-train-57``), for each N.
"""

from __future__ import annotations

import argparse
import json
import re
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from transformers import AutoTokenizer

from specbench.judge.cache import judges_dir, resolve_key
from specbench.judge.classifier import C_GRID, block_columns, train_classifier
from specbench.judge.mining import MiningCache
from specbench.judge.token_features import TokenFeaturizer

FEATURE_SETS = (
    "target",
    "draft",
    "target+draft",
    "tokens",
    "target+tokens",
    "target+draft+tokens",
    "confidence",
    "tokens+confidence",
    "target+confidence",
    "target+tokens+confidence",
    "target+draft+tokens+confidence",
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--judge", help="a trained judge's key (or a prefix)")
    source.add_argument("--mined", type=Path, help="a mining cache folder")
    parser.add_argument("--sets", default=",".join(FEATURE_SETS), help="feature sets to try")
    parser.add_argument("--model-dir", type=Path, required=True, help="the target's HF folder")
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--curve", help="prompt counts N: a learning curve of the first set")
    parser.add_argument("--choose", action="store_true", help="add the set chosen inside each fold")
    args = parser.parse_args()

    if args.mined is not None:
        name, hidden, labels, examples, confidence = _read_mining_cache(args.mined)
    else:
        folder = judges_dir() / resolve_key(args.judge)
        mined = torch.load(folder / "mined.pt")
        examples = [json.loads(line) for line in (folder / "examples.jsonl").open()]
        name, hidden, labels = f"judge {folder.name}", mined["features"].float(), mined["labels"]
        confidence = mined.get("confidence", torch.zeros(len(labels), 0))
    target_width = json.loads((args.model_dir / "config.json").read_text())["hidden_size"]
    tokenizer = AutoTokenizer.from_pretrained(args.model_dir)
    tokens = TokenFeaturizer(tokenizer.decode).features(
        [e["draft_token"] for e in examples],
        [e["target_token"] for e in examples],
        [e["position"] for e in examples],
    )
    parts = {
        "target": hidden[:, :target_width],
        "draft": hidden[:, target_width:],
        "tokens": tokens,
        "confidence": confidence,  # no columns when the data has none: those sets are skipped
    }
    groups = [e["prompt_id"] for e in examples]
    print(
        f"{name}: {len(labels)} mismatches, {int(labels.sum())} important, "
        f"{len(set(groups))} prompts; {args.folds}-fold by prompt, C grid {list(C_GRID)}"
    )
    if args.curve:
        _learning_curve(args, parts, labels, groups)
        return
    print("| features | columns | ROC-AUC | 95% interval (prompts bootstrapped) | C |")
    print("|---|---|---|---|---|")
    usable = [
        name
        for name in args.sets.split(",")
        if all(parts[p].shape[1] > 0 for p in name.split("+"))  # sets without data skipped
    ]
    for name in usable:
        x = torch.cat([parts[p] for p in name.split("+")], dim=-1)
        _, report = train_classifier(x, labels, groups=groups, folds=args.folds, seed=args.seed)
        _print_row(name, x.shape[1], report)
    if args.choose:
        sets = block_columns({part: block.shape[1] for part, block in parts.items()}, usable)
        x = torch.cat(list(parts.values()), dim=-1)
        _, report = train_classifier(
            x, labels, groups=groups, folds=args.folds, seed=args.seed, column_sets=sets
        )
        label = f"best of the {len(sets)} sets, chosen inside each fold"
        _print_row(f"{label} (on all data: {report.chosen_features})", x.shape[1], report)


def _print_row(name: str, columns: int, report: Any) -> None:
    low, high = report.roc_auc_interval or (float("nan"), float("nan"))
    print(
        f"| {name} | {columns} | {report.roc_auc:.3f} | {low:.2f}-{high:.2f} "
        f"| {report.chosen_c:g} |"
    )


def _learning_curve(
    args: argparse.Namespace,
    parts: dict[str, torch.Tensor],
    labels: torch.Tensor,
    groups: list[str],
) -> None:
    name = args.sets.split(",")[0]
    x = torch.cat([parts[p] for p in name.split("+")], dim=-1)
    ordinal = torch.tensor([_prompt_number(g) for g in groups])
    print(f"learning curve of {name} ({x.shape[1]} columns)")
    print("| first N prompts | mismatches | important | ROC-AUC | 95% interval | C |")
    print("|---:|---:|---:|---:|---|---:|")
    for n in (int(v) for v in args.curve.split(",")):
        keep = ordinal < n
        kept_groups = [g for g, k in zip(groups, keep.tolist(), strict=True) if k]
        _, report = train_classifier(
            x[keep], labels[keep], groups=kept_groups, folds=args.folds, seed=args.seed
        )
        low, high = report.roc_auc_interval or (float("nan"), float("nan"))
        print(
            f"| {n} | {int(keep.sum())} | {int(labels[keep].sum())} | {report.roc_auc:.3f} "
            f"| {low:.2f}-{high:.2f} | {report.chosen_c:g} |"
        )


def _prompt_number(prompt_id: str) -> int:
    found = re.search(r"(\d+)$", prompt_id)
    if found is None:
        raise SystemExit(f"--curve needs prompt ids that end in a number, not {prompt_id!r}")
    return int(found.group(1))


def _read_mining_cache(
    folder: Path,
) -> tuple[str, torch.Tensor, torch.Tensor, list[dict[str, Any]], torch.Tensor]:
    """Every mined prompt; once some have the confidence columns, only those."""
    mined = [m for m in MiningCache(folder).all() if m.examples]
    with_confidence = [m for m in mined if m.has_confidence]
    name = f"mined {folder.name} ({len(mined)} prompts with mismatches"
    if with_confidence:
        left = [e for m in mined if not m.has_confidence for e in m.examples]
        important = sum(e.important for e in left)
        name += (
            f", {len(mined) - len(with_confidence)} without confidence left out: "
            f"{len(left)} mismatches, {important} important"
        )
        mined = with_confidence
    features = torch.cat([torch.stack(m.features) for m in mined])
    examples = [asdict(e) for m in mined for e in m.examples]
    labels = torch.tensor([e["important"] for e in examples], dtype=torch.long)
    confidence = (
        torch.stack([c for m in mined for c in m.confidence])
        if with_confidence
        else torch.zeros(len(labels), 0)
    )
    return name + ")", features, labels, examples, confidence


if __name__ == "__main__":
    main()
