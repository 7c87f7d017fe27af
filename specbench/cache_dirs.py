"""Where specbench keeps what it fetches, builds and trains (models, judges, heads, logs)."""

from __future__ import annotations

import os
from pathlib import Path

CACHE_ENV = "SPECBENCH_CACHE"


def cache_root() -> Path:
    """Where fetched models live: ``$SPECBENCH_CACHE`` or ``~/.cache/specbench``."""
    configured = os.environ.get(CACHE_ENV)
    if configured:
        return Path(configured).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "specbench"
