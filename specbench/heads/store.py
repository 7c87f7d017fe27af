"""Trained heads on disk: one folder per key under ``<cache>/heads``."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

from specbench.keyed_store import KeyedStore

HEADS_FORMAT = 1


def heads_dir() -> Path:
    from specbench.models.catalog import cache_root

    return cache_root() / "heads"


STORE = KeyedStore("head", heads_dir, "specbench heads list")


def heads_key(target_identity: dict[str, Any], training: Any, kind: str) -> str:
    """The cache key of heads of ``kind`` trained for a target with ``training`` (a
    dataclass of every setting that determines them, the data included)."""
    # "data" names the shipped question set; a settings dataclass may override it.
    base = {"format": HEADS_FORMAT, "kind": kind, "data": "gsm8k-train", "target": target_identity}
    blob = json.dumps(
        base | asdict(training),
        sort_keys=True,
        default=str,
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:20]


def trained_folder(key: str) -> Path | None:
    """The folder of finished heads under ``key``, or ``None``."""
    folder = heads_dir() / key
    return folder if (folder / "meta.json").is_file() else None
