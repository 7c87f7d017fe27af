"""Folders of trained artefacts under a cache root, one per key (judges, heads).

Each artefact is a folder named by its key holding a ``meta.json`` (with ``key`` and
``created_at``); listing, key prefixes and deletion work the same for every kind.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from specbench.errors import SpecbenchError


@dataclass(frozen=True)
class KeyedStore:
    """``kind`` names the artefact in messages (``judge``), ``root`` finds the folder, and
    ``list_command`` is what a user types to see them."""

    kind: str
    root: Callable[[], Path]
    list_command: str

    def list(self) -> list[dict[str, Any]]:
        """Metadata of every stored artefact, newest first."""
        root = self.root()
        if not root.is_dir():
            return []
        metas = []
        for folder in root.iterdir():
            meta_file = folder / "meta.json"
            if folder.is_dir() and meta_file.is_file():
                metas.append(json.loads(meta_file.read_text()))
        return sorted(metas, key=lambda m: m.get("created_at", ""), reverse=True)

    def resolve(self, prefix: str) -> str:
        """A full key from a unique prefix."""
        matches = [str(m["key"]) for m in self.list() if str(m["key"]).startswith(prefix)]
        if len(matches) == 1:
            return matches[0]
        if not matches:
            raise SpecbenchError(
                f"no stored {self.kind} with key {prefix}", f"see `{self.list_command}`"
            )
        raise SpecbenchError(
            f"{len(matches)} {self.kind}s start with {prefix}", "give more of the key"
        )

    def clear(self, key: str | None = None) -> int:
        """Delete one artefact (by key prefix) or all of them; returns how many."""
        if key is not None:
            shutil.rmtree(self.root() / self.resolve(key))
            return 1
        metas = self.list()
        shutil.rmtree(self.root(), ignore_errors=True)
        return len(metas)
