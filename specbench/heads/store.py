"""Trained heads on disk: one folder per key under ``<cache>/heads``."""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from specbench.keyed_store import KeyedStore

HEADS_FORMAT = 1


def heads_dir() -> Path:
    from specbench.cache_dirs import cache_root

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


def stored_meta(key: str, force: bool) -> dict[str, Any] | None:
    """The metadata of finished heads under ``key`` (``None``: not trained, or ``force``
    dropped them)."""
    folder = heads_dir() / key
    if force:
        shutil.rmtree(folder, ignore_errors=True)
    if trained_folder(key) is None:
        return None
    meta: dict[str, Any] = json.loads((folder / "meta.json").read_text())
    return meta


def publish(key: str, write: Callable[[Path], object], meta: dict[str, Any]) -> Path:
    """Write heads (``write(folder)``) and their ``meta.json`` beside the final folder, then
    rename it into place, so a half-written folder is never taken for trained heads; the
    training's work folder (features, checkpoint) goes."""
    folder = heads_dir() / key
    partial = heads_dir() / f"{key}.partial"
    shutil.rmtree(partial, ignore_errors=True)
    write(partial)
    (partial / "meta.json").write_text(json.dumps(meta, indent=2, default=str))
    shutil.rmtree(folder, ignore_errors=True)
    partial.replace(folder)
    shutil.rmtree(work_folder(key), ignore_errors=True)
    return folder


def work_folder(key: str) -> Path:
    folder = heads_dir() / f"{key}.work"
    folder.mkdir(parents=True, exist_ok=True)
    return folder


class Checkpoint:
    """A training's resumable state (model, optimizer, step) in its work folder."""

    def __init__(self, key: str) -> None:
        self.path = work_folder(key) / "checkpoint.pt"

    def resume(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> int:
        """Load a saved state into ``model`` and ``optimizer``; the step it was at (0: none)."""
        if not self.path.is_file():
            return 0
        saved = torch.load(self.path)
        model.load_state_dict(saved["model"])
        optimizer.load_state_dict(saved["optimizer"])
        return int(saved["step"])

    def save(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer, step: int) -> None:
        partial = self.path.with_suffix(".partial")
        state = {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "step": step}
        torch.save(state, partial)
        partial.replace(self.path)


Trainer = Callable[..., tuple[Path, dict[str, Any]]]


def heads_for(
    context: Any,
    target: Any,
    kind: str,
    settings: Any,
    trainer: Trainer,
    train: bool,
    force: bool = False,
) -> tuple[Path, dict[str, Any]]:
    """The folder and metadata of the ``kind`` heads trained for the run's target with
    ``settings``; trains them with ``trainer`` when ``train``, else a missing head is a
    one-line error naming the command that trains it. ``context`` is the method's
    :class:`~specbench.plugins.RunContext`."""
    from specbench.errors import SpecbenchError
    from specbench.models.backends import model_identity

    identity = model_identity(context.models_spec.target)
    key = heads_key(identity, settings, kind=kind)
    if trained_folder(key) is None or force:
        if not train:
            raise SpecbenchError(
                f"{context.label}: no {kind} head trained for this target and settings",
                f"run `specbench train -p {context.preset_source}` (or `run --train`), "
                "or point the method's params at a head folder",
            )
        trainer(target, identity, settings, force, context.on_progress)
    folder = heads_dir() / key
    meta: dict[str, Any] = json.loads((folder / "meta.json").read_text())
    return folder, meta
