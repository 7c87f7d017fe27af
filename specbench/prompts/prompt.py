"""One benchmark prompt, and the reference answers its tasks compare against."""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Prompt:
    """One benchmark prompt. ``turns`` are the user messages, in order."""

    id: str
    turns: tuple[str, ...]
    category: str | None = None
    reference: Mapping[str, Any] = field(default_factory=dict)
    task: str | None = None
    #: The prompt's own system message (chat data), used instead of the preset's.
    system: str | None = None

    @property
    def text(self) -> str:
        return self.turns[0]

    @property
    def sha(self) -> str:
        """A short fingerprint of what the model is given (turns and system message)."""
        blob = json.dumps([list(self.turns), self.system], ensure_ascii=False)
        return hashlib.sha256(blob.encode()).hexdigest()[:12]


def gsm8k_final_answer(text: str) -> str | None:
    """The number after ``####`` in a GSM8K solution, normalised (``1,000`` -> ``1000``)."""
    match = re.search(r"####\s*(.+)$", text.strip())
    if not match:
        return None
    return normalize_number(match.group(1))


def normalize_number(text: str) -> str | None:
    """A number as a canonical string: commas, dollar signs and trailing ``.0`` removed."""
    cleaned = text.replace(",", "").replace("$", "").strip()
    match = re.search(r"-?\d+(?:\.\d+)?", cleaned)
    if not match:
        return None
    value = match.group(0)
    if "." in value:
        value = value.rstrip("0").rstrip(".")
    return value
