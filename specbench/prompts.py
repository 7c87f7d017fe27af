"""Prompt sets: where a preset's prompts come from, and loading them.

Every source yields :class:`Prompt` objects with a stable ``id`` (used to resume runs and to
pair methods prompt by prompt), one or more turns and an optional category.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from specbench.errors import SpecbenchError


@dataclass(frozen=True)
class Prompt:
    """One benchmark prompt. ``turns[0]`` is the first user message."""

    id: str
    turns: tuple[str, ...]
    category: str | None = None

    @property
    def text(self) -> str:
        return self.turns[0]


class _PromptSetBase(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    limit: int | None = Field(None, ge=1, description="Use only the first N prompts.")
    categories: list[str] | None = Field(None, description="Keep only these categories.")

    def check(self, base_dir: Path) -> list[tuple[str, str, str]]:
        """Problems that need the file system: ``(field, message, hint)`` triples."""
        return []

    def load(self, base_dir: Path) -> list[Prompt]:
        """The prompts, filtered by category and cut to ``limit``."""
        prompts = self._read(base_dir)
        if self.categories is not None:
            wanted = set(self.categories)
            prompts = [p for p in prompts if p.category in wanted]
        if self.limit is not None:
            prompts = prompts[: self.limit]
        if not prompts:
            raise SpecbenchError(
                "the prompt set is empty after filtering", "check prompts.categories and limit"
            )
        return prompts

    def _read(self, base_dir: Path) -> list[Prompt]:
        raise NotImplementedError


class InlinePrompt(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str | None = None
    prompt: str
    category: str | None = None


class InlinePromptSet(_PromptSetBase):
    """Prompts written in the preset itself."""

    source: Literal["inline"] = "inline"
    prompts: list[str | InlinePrompt] = Field(min_length=1)

    def _read(self, base_dir: Path) -> list[Prompt]:
        out = []
        for i, item in enumerate(self.prompts):
            if isinstance(item, str):
                out.append(Prompt(id=f"p{i}", turns=(item,)))
            else:
                out.append(
                    Prompt(id=item.id or f"p{i}", turns=(item.prompt,), category=item.category)
                )
        return out


class JsonlPromptSet(_PromptSetBase):
    """A JSONL file with ``prompt`` (a string) or ``turns`` (a list) per line.

    Optional per line: ``id`` (or ``question_id``) and ``category``. A relative ``path`` is
    looked up next to the preset file first, then in the working directory.
    """

    source: Literal["jsonl"] = "jsonl"
    path: str

    def resolve(self, base_dir: Path) -> Path | None:
        for candidate in (base_dir / self.path, Path(self.path)):
            if candidate.is_file():
                return candidate
        return None

    def check(self, base_dir: Path) -> list[tuple[str, str, str]]:
        if self.resolve(base_dir) is None:
            return [
                (
                    "path",
                    f"file {self.path} not found (looked in {base_dir} and the working directory)",
                    "correct the path",
                )
            ]
        return []

    def _read(self, base_dir: Path) -> list[Prompt]:
        path = self.resolve(base_dir)
        if path is None:
            raise SpecbenchError(f"prompt file {self.path} not found", "correct prompts.path")
        return read_prompt_jsonl(path)


def read_prompt_jsonl(path: Path) -> list[Prompt]:
    """Prompts from a JSONL file (see :class:`JsonlPromptSet` for the fields)."""
    prompts = []
    with path.open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as error:
                raise SpecbenchError(
                    f"{path}:{number}: not valid JSON ({error.msg})", "fix or remove that line"
                ) from error
            prompts.append(_prompt_from_row(row, f"{path}:{number}", default_id=str(number - 1)))
    return prompts


def _prompt_from_row(row: Any, where: str, default_id: str) -> Prompt:
    if not isinstance(row, dict):
        raise SpecbenchError(f"{where}: a line must be a JSON object", 'write {"prompt": ...}')
    if isinstance(row.get("turns"), list) and row["turns"]:
        turns = tuple(str(t) for t in row["turns"])
    elif isinstance(row.get("prompt"), str):
        turns = (row["prompt"],)
    else:
        raise SpecbenchError(
            f"{where}: no 'prompt' string or 'turns' list", "add one of the two fields"
        )
    raw_id = row.get("id", row.get("question_id", default_id))
    category = row.get("category")
    return Prompt(id=str(raw_id), turns=turns, category=None if category is None else str(category))


PromptSetSpec = Annotated[InlinePromptSet | JsonlPromptSet, Field(discriminator="source")]
