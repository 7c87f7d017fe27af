"""Prompt sets: where a preset's prompts come from, and loading them.

Every source yields :class:`Prompt` objects with a stable ``id`` (used to resume runs and to
pair methods prompt by prompt), one or more user turns, an optional category and, where the
set has answers, a ``reference`` for scoring.

Sources: ``inline`` (in the preset), ``jsonl`` (``prompt`` or ``turns`` per line), the
built-in sets ``mt-bench``, ``spec-bench``, ``gsm8k`` and ``humaneval`` (shipped in the
package; see ``specbench/prompts/data/SOURCES.md``), and ``dataset`` (a local json, jsonl,
parquet or csv file read with the ``datasets`` library).
"""

from __future__ import annotations

import functools
import importlib.util
import json
import re
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import replace
from pathlib import Path
from typing import Annotated, Any, Literal, get_args

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SerializeAsAny,
    ValidatorFunctionWrapHandler,
    WrapValidator,
)

from specbench.entry_points import LoadedGroup, load_entry_points
from specbench.errors import SpecbenchError
from specbench.install_hints import install_extra
from specbench.prompts.prompt import Prompt, gsm8k_final_answer, normalize_number

DATA_DIR = Path(__file__).parent / "data"


class PromptSource(BaseModel):
    """The base of every prompt source (a preset's ``[prompts]`` table): the filters every
    source shares, and ``load``. A plugin source (entry-point group ``specbench.prompt_sources``)
    subclasses it with ``source: Literal["<name>"]``, its own fields, and ``_read(base_dir)``
    returning :class:`~specbench.prompts.prompt.Prompt` objects (``prompts_from_rows`` makes
    them from rows with unique ids)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    limit: int | None = Field(None, ge=1, description="Use only the first N prompts.")
    categories: list[str] | None = Field(None, description="Keep only these categories.")
    per_category: int | None = Field(None, ge=1, description="At most N prompts per category.")
    max_turns: int | None = Field(None, ge=1, description="Use only the first N turns.")
    template: str | None = Field(
        None, description="Wraps the first turn; {prompt} stands for it, e.g. 'Q: {prompt}\\nA:'."
    )
    chat_template: bool = Field(True, description="Use the tokenizer's chat template if any.")
    system_prompt: str | None = None
    skip: int = Field(0, ge=0, description="Drop the first N prompts (before limit).")
    task: str | None = Field(
        None,
        description="How outputs are scored (gsm8k, humaneval); the built-in sets set it.",
    )

    def check(self, base_dir: Path) -> list[tuple[str, str, str]]:
        """Problems beyond the schema: ``(field, message, hint)`` triples."""
        from specbench.prompts.tasks import tasks, unknown_task

        issues = []
        if self.template is not None and "{prompt}" not in self.template:
            issues.append(("template", "the template has no {prompt} placeholder", "add {prompt}"))
        if self.task is not None and self.task not in tasks():
            issues.append(
                ("task", unknown_task(self.task), f"use one of: {', '.join(sorted(tasks()))}")
            )
        return issues

    def check_contents(self, base_dir: Path) -> list[tuple[str, str, str]]:
        """Read the prompts (cheap for files and inline sets) so ``validate`` catches an empty
        file, an empty prompt or filters that leave nothing, before a run starts."""
        try:
            self.load(base_dir)
        except SpecbenchError as error:
            return [("prompts", error.message, error.hint or "")]
        return []

    def describe(self, base_dir: Path) -> str:
        """Where the prompts come from, for error messages."""
        return str(getattr(self, "source", "prompts"))

    def load(self, base_dir: Path) -> list[Prompt]:
        """The prompts, filtered and cut as the preset says."""
        prompts = self._read(base_dir)
        if not prompts:
            raise SpecbenchError(
                f"{self.describe(base_dir)} holds no prompts", "add prompts or use another file"
            )
        if self.categories is not None:
            wanted = set(self.categories)
            prompts = [p for p in prompts if p.category in wanted]
        if self.per_category is not None:
            seen: Counter[str | None] = Counter()
            kept = []
            for prompt in prompts:
                seen[prompt.category] += 1
                if seen[prompt.category] <= self.per_category:
                    kept.append(prompt)
            prompts = kept
        prompts = prompts[self.skip :]
        if self.limit is not None:
            prompts = prompts[: self.limit]
        if not prompts:
            raise SpecbenchError(
                f"no prompt of {self.describe(base_dir)} is left after filtering "
                f"(categories={self.categories}, per_category={self.per_category}, "
                f"skip={self.skip}, limit={self.limit})",
                "check prompts.categories, skip and limit",
            )
        return [self._shape(p) for p in prompts]

    def _shape(self, prompt: Prompt) -> Prompt:
        turns = prompt.turns[: self.max_turns] if self.max_turns else prompt.turns
        if self.template is not None:
            turns = (self.template.replace("{prompt}", turns[0]), *turns[1:])
        return Prompt(
            prompt.id,
            turns,
            prompt.category,
            prompt.reference,
            self.task or prompt.task,
            prompt.system,
        )

    def _read(self, base_dir: Path) -> list[Prompt]:
        raise NotImplementedError


class InlinePrompt(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str | None = None
    prompt: str | None = None
    turns: list[str] | None = None
    category: str | None = None


class InlinePromptSet(PromptSource):
    """Prompts written in the preset itself (strings, or tables with id/prompt/turns)."""

    source: Literal["inline"] = "inline"
    prompts: list[str | InlinePrompt] = Field(min_length=1)

    def describe(self, base_dir: Path) -> str:
        return "the inline prompts"

    def _read(self, base_dir: Path) -> list[Prompt]:
        rows = (
            ({"prompt": item} if isinstance(item, str) else item.model_dump(exclude_none=True),
             f"prompts[{i}]")
            for i, item in enumerate(self.prompts)
        )  # fmt: skip
        return prompts_from_rows(rows, lambda i: f"p{i}")


class JsonlPromptSet(PromptSource):
    """A JSONL file with ``prompt`` (a string), ``turns`` (a list) or ``messages`` (an
    OpenAI-format chat: user turns kept, a system message used, assistant turns dropped) per
    line.

    Optional per line: ``id`` (or ``question_id``, ``task_id``) and ``category``. A relative
    ``path`` is looked up next to the preset file first, then in the working directory.
    """

    source: Literal["jsonl"] = "jsonl"
    path: str

    def check(self, base_dir: Path) -> list[tuple[str, str, str]]:
        return super().check(base_dir) + _check_path(self.path, base_dir)

    def describe(self, base_dir: Path) -> str:
        try:
            return f"the prompt file {_resolve_path(self.path, base_dir)}"
        except SpecbenchError:
            return f"the prompt file {self.path}"

    def _read(self, base_dir: Path) -> list[Prompt]:
        return prompts_from_rows(_jsonl_rows(_resolve_path(self.path, base_dir)), str)


BuiltinName = Literal["mt-bench", "spec-bench", "gsm8k", "humaneval"]
BUILTIN_SETS: tuple[str, ...] = get_args(BuiltinName)


class BuiltinPromptSet(PromptSource):
    """A prompt set shipped with specbench.

    ``mt-bench``: 80 two-turn questions in 8 categories. ``spec-bench``: the 480 Spec-Bench
    questions (MT-Bench plus translation, summarization, qa, math_reasoning, rag).
    ``gsm8k``: grade-school maths (``split`` train or test; the reference is the final
    number). ``humaneval``: 164 Python functions to complete (the reference holds the tests).
    """

    source: BuiltinName
    split: Literal["train", "test"] = Field("test", description="gsm8k only.")

    def describe(self, base_dir: Path) -> str:
        return f"the built-in set {self.source}"

    def check(self, base_dir: Path) -> list[tuple[str, str, str]]:
        issues = super().check(base_dir)
        if self.split == "train" and self.source != "gsm8k":
            issues.append(("split", f"{self.source} has only one split", "remove split"))
        return issues

    def _read(self, base_dir: Path) -> list[Prompt]:
        if self.source == "gsm8k":
            return [
                Prompt(
                    id=f"gsm8k-{self.split}-{i}",
                    turns=(row["question"],),
                    category="gsm8k",
                    reference={
                        "answer": gsm8k_final_answer(row["answer"]),
                        "solution": row["answer"],
                    },
                    task="gsm8k",
                )
                for i, (row, _) in enumerate(_jsonl_rows(DATA_DIR / f"gsm8k_{self.split}.jsonl"))
            ]
        if self.source == "humaneval":
            return [
                Prompt(
                    id=row["task_id"],
                    turns=(row["prompt"],),
                    category="humaneval",
                    reference={k: row[k] for k in ("prompt", "test", "entry_point")},
                    task="humaneval",
                )
                for row, _ in _jsonl_rows(DATA_DIR / "humaneval.jsonl")
            ]
        file = {"mt-bench": "mt_bench_question.jsonl", "spec-bench": "spec_bench_question.jsonl"}
        return prompts_from_rows(_jsonl_rows(DATA_DIR / file[self.source]), str)


class DatasetPromptSet(PromptSource):
    """A local file read with the ``datasets`` library (json/jsonl, parquet, csv).

    Field names say where the prompt (or the list of turns), id and category are.
    """

    source: Literal["dataset"] = "dataset"
    path: str
    format: Literal["json", "parquet", "csv"] | None = Field(
        None, description="Default: from the file extension."
    )
    split: str = "train"
    prompt_field: str = "prompt"
    turns_field: str | None = None
    messages_field: str | None = Field(
        None,
        description="A list of chat messages ({role, content}, OpenAI format): user messages "
        "become the turns, a system message the prompt's system prompt, assistant messages "
        "are dropped (the model writes its own answers).",
    )
    id_field: str | None = "id"
    category_field: str | None = "category"

    def describe(self, base_dir: Path) -> str:
        return f"the dataset file {self.path}"

    def check_contents(self, base_dir: Path) -> list[tuple[str, str, str]]:
        return []  # reading needs the datasets library and can be slow: checked at run time

    def check(self, base_dir: Path) -> list[tuple[str, str, str]]:
        issues = super().check(base_dir) + _check_path(self.path, base_dir)
        if not _importable("datasets"):  # what _read would refuse, said before the run
            issues.append(("source", _NEEDS_DATASETS, install_extra("hf")))
        if not issues and self._format(Path(self.path)) is None:
            issues.append(("format", f"cannot tell the format of {self.path}", "set format"))
        return issues

    def _format(self, path: Path) -> str | None:
        if self.format:
            return self.format
        return {".json": "json", ".jsonl": "json", ".parquet": "parquet", ".csv": "csv"}.get(
            path.suffix.lower()
        )

    def _read(self, base_dir: Path) -> list[Prompt]:
        try:
            import datasets
        except ImportError as error:
            raise SpecbenchError(_NEEDS_DATASETS, install_extra("hf")) from error
        path = _resolve_path(self.path, base_dir)
        data = datasets.load_dataset(self._format(path), data_files=str(path), split=self.split)
        return prompts_from_rows(
            ((self._map(row), f"{path} row {i}") for i, row in enumerate(data)), str
        )

    def _map(self, row: Mapping[str, Any]) -> dict[str, Any]:
        """A dataset row in the field names of :func:`prompt_from_row`."""
        mapped = {"prompt": row.get(self.prompt_field)}
        if self.turns_field:
            mapped = {"turns": row.get(self.turns_field)}
        if self.messages_field:
            mapped = {"messages": row.get(self.messages_field)}
        if self.id_field and row.get(self.id_field) is not None:
            mapped["id"] = row[self.id_field]
        if self.category_field and row.get(self.category_field) is not None:
            mapped["category"] = row[self.category_field]
        return mapped


_NEEDS_DATASETS = "prompt source 'dataset' needs the datasets library, which is not installed"


def _importable(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # ValueError: a module set to None in sys.modules
        return False


PROMPT_SOURCE_GROUP = "specbench.prompt_sources"


@functools.cache
def source_plugins() -> LoadedGroup[PromptSource]:
    """Prompt sources registered under ``specbench.prompt_sources``, the loaded and the
    broken (loaded once; ``cache_clear`` reads the entry points again)."""
    return load_entry_points(PROMPT_SOURCE_GROUP, PromptSource)


def plugin_sources() -> dict[str, type[PromptSource]]:
    """The plugins' prompt sources by name."""
    return {name: entry.cls for name, entry in source_plugins().loaded.items()}


def _plugin_or_builtin(value: Any, handler: ValidatorFunctionWrapHandler) -> Any:
    """A table naming a plugin's source is validated by that source's model; every other
    table by the built-in sources' discriminated union, unchanged."""
    if isinstance(value, dict):
        name = value.get("source")
        if isinstance(name, str) and name not in _BUILTIN_SOURCES:
            plugins = source_plugins()
            if name in plugins.loaded:
                return plugins.loaded[name].cls.model_validate(value)
            if name in plugins.broken:
                raise ValueError(
                    f"prompt source {name!r} failed to load: {plugins.broken[name].error}"
                )
            known = sorted(_BUILTIN_SOURCES) + sorted(plugins.loaded)
            raise ValueError(
                f"unknown prompt source {name!r}: use one of {', '.join(known)} "
                "(plugin sources install through the specbench.prompt_sources entry points)"
            )
    elif isinstance(value, PromptSource) and type(value) not in _BUILTIN_SOURCES.values():
        return value  # a plugin source's model, already validated
    return handler(value)


#: A ``[prompts]`` table: a built-in source (inline, jsonl, a built-in set, dataset) or a
#: plugin's.
PromptSetSpec = Annotated[
    SerializeAsAny[
        Annotated[
            InlinePromptSet | JsonlPromptSet | BuiltinPromptSet | DatasetPromptSet,
            Field(discriminator="source"),
        ]
    ],
    WrapValidator(_plugin_or_builtin),
]
_BUILTIN_SOURCES: dict[str, type[PromptSource]] = {
    **{name: BuiltinPromptSet for name in BUILTIN_SETS},
    "inline": InlinePromptSet,
    "jsonl": JsonlPromptSet,
    "dataset": DatasetPromptSet,
}


def source_model(source: Any) -> type[PromptSource] | None:
    """The schema of the prompt source called ``source`` (``None`` if there is none)."""
    if not isinstance(source, str):
        return None
    return _BUILTIN_SOURCES.get(source) or plugin_sources().get(source)


def sources_with(field_name: str) -> list[str]:
    """The sources whose tables have ``field_name`` beyond the fields every source has."""
    common = set(PromptSource.model_fields)
    return [
        name
        for name, model in {**_BUILTIN_SOURCES, **plugin_sources()}.items()
        if field_name in model.model_fields and field_name not in common
        and model is not BuiltinPromptSet
    ]  # fmt: skip


# ----------------------------------------------------------------------------- helpers


def prompts_from_rows(
    rows: Iterable[tuple[Any, str]], default_id: Callable[[int], str]
) -> list[Prompt]:
    """Prompts from ``(row, where)`` pairs, every id unique.

    A repeated given id is an error naming both places. A row without an id gets
    ``default_id(position)``, unless a given id (or an earlier automatic one) already has
    it: then a suffix ``.2``, ``.3``, ... makes it unique, so an automatic id never takes the
    place of a given one (the runner and resume pair records by id).
    """
    read = [(prompt_from_row(row, where, default_id=""), where) for row, where in rows]
    given: dict[str, str] = {}
    for prompt, where in read:
        if not prompt.id:
            continue
        if prompt.id in given:
            raise SpecbenchError(
                f"{given[prompt.id]} and {where} both have id '{prompt.id}'",
                "give every prompt its own id (or drop the ids to number them)",
            )
        given[prompt.id] = where
    taken = set(given)
    out = []
    for position, (prompt, _) in enumerate(read):
        if prompt.id:
            out.append(prompt)
            continue
        base = candidate = default_id(position)
        suffix = 2
        while candidate in taken:
            candidate, suffix = f"{base}.{suffix}", suffix + 1
        taken.add(candidate)
        out.append(replace(prompt, id=candidate))
    return out


def prompt_from_row(row: Any, where: str, default_id: str) -> Prompt:
    """A :class:`Prompt` from a mapping with ``prompt`` or ``turns``, ``id``, ``category``."""
    if not isinstance(row, dict):
        raise SpecbenchError(f"{where}: a prompt must be an object", 'write {"prompt": ...}')
    system = None
    if isinstance(row.get("messages"), list):
        turns_from_chat, system = _from_messages(row["messages"], where)
        row = {**row, "turns": list(turns_from_chat)}
    if isinstance(row.get("turns"), list) and row["turns"]:
        turns = tuple(str(t) for t in row["turns"])
    elif isinstance(row.get("prompt"), str):
        turns = (row["prompt"],)
    else:
        raise SpecbenchError(
            f"{where}: no 'prompt' string or 'turns' list", "add one of the two fields"
        )
    if any(not turn.strip() for turn in turns):
        raise SpecbenchError(f"{where}: the prompt is empty", "write the prompt text or remove it")
    raw_id = next((row[k] for k in ("id", "question_id", "task_id") if k in row), default_id)
    category = row.get("category")
    reference: dict[str, Any] = {"reference": row["reference"]} if "reference" in row else {}
    if "answer" in row:  # a GSM8K-style solution or a bare final answer
        reference["answer"] = gsm8k_final_answer(str(row["answer"])) or normalize_number(
            str(row["answer"])
        )
    return Prompt(
        id=str(raw_id),
        turns=turns,
        category=None if category is None else str(category),
        reference=reference,
        system=system,
    )


def _from_messages(messages: list[Any], where: str) -> tuple[list[str], str | None]:
    """User turns and the system message of an OpenAI-style chat; assistant turns dropped."""
    turns: list[str] = []
    system = None
    for index, message in enumerate(messages):
        if not isinstance(message, dict) or "role" not in message:
            raise SpecbenchError(
                f"{where}: messages[{index}] is not a {{role, content}} object",
                "use OpenAI chat format",
            )
        content = message.get("content")
        text = content if isinstance(content, str) else json.dumps(content)
        if message["role"] == "system" and system is None:
            system = text
        elif message["role"] == "user":
            turns.append(text)
    if not turns:
        raise SpecbenchError(f"{where}: the messages hold no user turn", "add a user message")
    return turns, system


def _jsonl_rows(path: Path) -> Iterator[tuple[Any, str]]:
    with path.open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                yield json.loads(line), f"{path}:{number}"
            except json.JSONDecodeError as error:
                raise SpecbenchError(
                    f"{path}:{number}: not valid JSON ({error.msg})", "fix or remove that line"
                ) from error


def _resolve_path(path: str, base_dir: Path) -> Path:
    for candidate in (base_dir / path, Path(path)):
        if candidate.is_file():
            return candidate
    message, hint = _not_found(path, base_dir)
    raise SpecbenchError(message, hint)


def _check_path(path: str, base_dir: Path) -> list[tuple[str, str, str]]:
    try:
        _resolve_path(path, base_dir)
    except SpecbenchError as error:
        return [("path", error.message, error.hint or "")]
    return []


def _not_found(path: str, base_dir: Path) -> tuple[str, str]:
    if re.fullmatch(r"[\w.-]+/[\w.-]+", path) and not Path(path).suffix:
        # "openai/gsm8k": a hub dataset id; nothing is downloaded at run time.
        return (
            f"prompt files are local, and {path} looks like a hub dataset id",
            f"use a built-in set (source = one of {', '.join(BUILTIN_SETS)}), or a local "
            'file: source = "jsonl" or source = "dataset" (json, parquet, csv) with its path',
        )
    return (
        f"file {path} not found (looked in {base_dir} and the working directory)",
        "correct prompts.path",
    )
