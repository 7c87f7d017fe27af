"""Trained judges on disk, under a key of everything that determines them.

The key hashes the target and draft specs (with a fingerprint of local weights), the training
prompt set and its split and shaping, the mining and feature settings, the classifier
settings and the judge format version. Change any of them and the key changes; the threshold
and draft length of the decoding method do not enter it, so one judge serves a whole sweep.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch

from specbench.cache_dirs import cache_root
from specbench.judge.classifier import JudgeClassifier, TrainReport
from specbench.judge.mining import MinedData, example_rows
from specbench.keyed_store import KeyedStore

JUDGE_FORMAT = 1


def judges_dir() -> Path:
    return cache_root() / "judges"


def judge_key(determinants: dict[str, Any]) -> str:
    blob = json.dumps({"format": JUDGE_FORMAT, **determinants}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:20]


@dataclass
class StoredJudge:
    key: str
    classifier: JudgeClassifier
    report: TrainReport
    meta: dict[str, Any]


def save_judge(
    key: str,
    classifier: JudgeClassifier,
    report: TrainReport,
    data: MinedData,
    meta: dict[str, Any],
) -> Path:
    """Write a judge (classifier, mined data, metadata) atomically to its key's folder."""
    folder = judges_dir() / key
    partial = folder.with_name(key + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    torch.save(classifier.to_dict(), partial / "classifier.pt")
    mined: dict[str, torch.Tensor] = {"features": data.features.half(), "labels": data.labels}
    if data.confidence is not None:
        mined["confidence"] = data.confidence.float()
    torch.save(mined, partial / "mined.pt")
    with (partial / "examples.jsonl").open("w") as handle:
        for row in example_rows(data):
            handle.write(json.dumps(row) + "\n")
    full_meta = {
        **meta,
        "key": key,
        "format": JUDGE_FORMAT,
        "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "report": asdict(report),
        "prompts_used": data.prompts_used,
        "prompts_without_answer": data.prompts_without_answer,
    }
    (partial / "meta.json").write_text(json.dumps(full_meta, indent=2, default=str))
    shutil.rmtree(folder, ignore_errors=True)
    partial.replace(folder)
    return folder


def load_judge(key: str) -> StoredJudge | None:
    folder = judges_dir() / key
    if not (folder / "meta.json").is_file() or not (folder / "classifier.pt").is_file():
        return None
    meta = json.loads((folder / "meta.json").read_text())
    classifier = JudgeClassifier.from_dict(torch.load(folder / "classifier.pt"))
    return StoredJudge(
        key=key, classifier=classifier, report=TrainReport(**meta["report"]), meta=meta
    )


STORE = KeyedStore("judge", judges_dir, "specbench judge cache list")


def list_judges() -> list[dict[str, Any]]:
    """Metadata of every stored judge, newest first."""
    return STORE.list()


def resolve_key(prefix: str) -> str:
    """A full key from a unique prefix (as ``judge cache show`` accepts)."""
    return STORE.resolve(prefix)


def clear(key: str | None = None) -> int:
    """Delete one judge (by key prefix) or all of them; returns how many were deleted."""
    return STORE.clear(key)
