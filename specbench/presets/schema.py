"""Presets: the pydantic schema of a benchmark, loading TOML files, overrides and validation.

A preset names the models, the methods (each with parameters checked by the method's own
``Params`` model), the prompt set, sampling, how many runs and where the output goes.
Validation reports every problem at once, each with the file, the field path and a fix.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal, NamedTuple, get_args, get_origin

import tomllib
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError, field_validator

from specbench.errors import PluginError, SpecbenchError
from specbench.models.spec_base import ModelSpecBase
from specbench.models.specs import ModelsSpec
from specbench.plugins import MethodInfo, MethodParams, MethodRegistry, ModelRole
from specbench.presets.formats import (
    PresetSyntaxError,
    dump,
    format_of,
    line_of,
    parse,
    yaml_lines,
)
from specbench.presets.importing import import_config, recognise
from specbench.prompts.sources import PromptSetSpec

PRESET_PATH_ENV = "SPECBENCH_PRESET_PATH"


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class MethodEntry(_Section):
    """One method to run: an installed method's name, its parameters, an optional label."""

    name: str
    label: str | None = Field(
        None, description="Unique name in results; needed when a method appears twice."
    )
    params: dict[str, Any] = Field(default_factory=dict)

    @property
    def key(self) -> str:
        return self.label or self.name


class SamplingSpec(_Section):
    temperature: float = Field(0.0, ge=0, description="0 means greedy.")
    top_k: int | None = Field(None, ge=1)
    top_p: float = Field(1.0, gt=0, le=1)
    max_new_tokens: int = Field(128, ge=1)
    seed: int = Field(0, ge=0)


class RunsSpec(_Section):
    count: int = Field(1, ge=1, description="Timed runs per prompt and method.")
    warmup: int = Field(1, ge=0, description="Untimed generations per method before timing.")
    baseline: str = Field("baseline", description="Label of the method speedups divide by.")
    order: Literal["prompt", "method", "engines-last"] = Field(
        "prompt",
        description="prompt: every method on a prompt before the next (drift hits all alike); "
        "method: one method at a time, each prepared before and closed after its prompts "
        "(engines that each hold a model in memory); engines-last: the in-process methods "
        "prompt by prompt, then each external engine by itself.",
    )
    concurrency: list[int] | None = Field(
        None,
        description="Load levels: each method with a concurrency parameter (a server) runs "
        "once per level, labelled <label>@c<level> (--concurrency 1,4,16).",
    )

    @field_validator("concurrency")
    @classmethod
    def _levels(cls, value: list[int] | None) -> list[int] | None:
        if value is not None:
            if not value or any(level < 1 for level in value):
                raise ValueError("give one or more levels of at least 1, e.g. [1, 4, 16]")
            if len(set(value)) != len(value):
                raise ValueError("each level once")
        return value


class OutputSpec(_Section):
    path: str = Field(
        "results/{preset}-{timestamp}.jsonl",
        description="JSONL file; {preset} and {timestamp} are filled in.",
    )
    save_text: bool = True
    save_tokens: bool = False


class ClusterSpec(_Section):
    """Resources of each Ray worker of a distributed run (``run --ray``)."""

    workers: int = Field(2, ge=1, description="Shards of prompts (one Ray task each).")
    num_cpus: float = Field(1, ge=0, description="CPUs each worker reserves.")
    num_gpus: float = Field(0, ge=0, description="GPUs each worker reserves.")
    memory_gb: float | None = Field(None, gt=0, description="Memory each worker reserves.")
    max_retries: int = Field(2, ge=0, description="Times a failed shard is tried again.")


class Preset(_Section):
    """A whole benchmark, as written in a preset file."""

    name: str = ""
    description: str = ""
    models: ModelsSpec
    methods: list[MethodEntry] | None = Field(
        None, description='A list of [[methods]] tables, or "all" for every installed method.'
    )
    prompts: PromptSetSpec
    sampling: SamplingSpec = SamplingSpec()
    runs: RunsSpec = RunsSpec()
    output: OutputSpec = OutputSpec()
    cluster: ClusterSpec = ClusterSpec()

    @field_validator("methods", mode="before")
    @classmethod
    def _all_methods(cls, value: Any) -> Any:
        if isinstance(value, str):
            if value != "all":
                raise ValueError('write methods = "all" or a list of [[methods]] tables')
            return None
        return value


@dataclass(frozen=True)
class PresetIssue:
    """One problem in a preset: where (a field path, and a line when the format tells) and
    what to do."""

    path: str
    message: str
    hint: str
    line: int | None = None
    #: Where the value came from when not from the file: the flag as typed (``--runs 0``).
    origin: str | None = None

    def render(self, source: str) -> str:
        at = f"{source}:{self.line}" if self.line is not None else source
        if self.origin is not None:
            at = self.origin
        where = f"{at}: {self.path}" if self.path else at
        return f"{where}: {self.message}. Fix: {self.hint}"


class Override(NamedTuple):
    """One value set on top of a preset file: a dotted key, the value, and ``origin``, how
    the user gave it (``--runs 0``, ``--set sampling.top_p=2``), which errors about the
    value name instead of the file."""

    key: str
    value: Any
    origin: str = ""


#: An :class:`Override`, or a plain ``(key, value)`` pair (no origin to name in errors).
OverrideLike = Override | tuple[str, Any]


class PresetError(SpecbenchError):
    """A preset that does not validate; carries every issue found."""

    def __init__(self, source: str, issues: Sequence[PresetIssue]) -> None:
        self.source = source
        self.issues = list(issues)
        super().__init__("\n".join(issue.render(source) for issue in self.issues))

    def __str__(self) -> str:
        return self.message


@dataclass(frozen=True)
class ResolvedMethod:
    """A preset method bound to its installed implementation and validated parameters."""

    label: str
    info: MethodInfo
    params: MethodParams


@dataclass(frozen=True)
class ResolvedPreset:
    """A validated preset, ready for the runner."""

    preset: Preset
    methods: list[ResolvedMethod]
    source: str
    base_dir: Path
    hash: str
    #: Installed methods that ``methods = "all"`` left out, each with the reason.
    skipped: tuple[tuple[str, str], ...] = ()
    #: The ``specbench run`` arguments that made it (preset, flags, --set, --sweep), when a
    #: command line did: run headers keep them, so a refused resume can print the command
    #: that wrote the file.
    arguments: tuple[str, ...] = ()

    @property
    def name(self) -> str:
        return self.preset.name

    def effective(self) -> dict[str, Any]:
        """The preset as it will run: overrides applied, "all" expanded, defaults filled."""
        return _effective(self.preset, self.methods)


def flatten_preset(data: Any, prefix: str = "") -> dict[str, str]:
    """Nested preset tables as ``a.b.c`` keys with string values (lists as JSON); methods
    are keyed by label (``methods.speculative.params.k``)."""
    out: dict[str, str] = {}
    if isinstance(data, dict):
        for key, value in data.items():
            out.update(flatten_preset(value, f"{prefix}.{key}" if prefix else str(key)))
    elif isinstance(data, list) and any(isinstance(v, dict) for v in data):
        for index, value in enumerate(data):
            label = value.get("label", index) if isinstance(value, dict) else index
            out.update(flatten_preset(value, f"{prefix}.{label}"))
    else:
        out[prefix] = json.dumps(data) if isinstance(data, list) else str(data)
    return out


def preset_differences(before: Mapping[str, Any], after: Mapping[str, Any]) -> list[str]:
    """What differs between two effective presets (the hashed fields), one phrase each:
    ``sampling.max_new_tokens: 16 in the file, 8 now``."""
    labels = [[m.get("label") for m in p.get("methods") or []] for p in (before, after)]
    out = []
    if labels[0] != labels[1]:  # other methods: one phrase, not one per parameter
        out.append(f"methods: {', '.join(labels[0])} in the file, {', '.join(labels[1])} now")
    old = {k: v for k, v in flatten_preset(dict(before)).items() if not _unhashed(k)}
    new = {k: v for k, v in flatten_preset(dict(after)).items() if not _unhashed(k)}
    missing = "(absent)"
    return out + [
        f"{key}: {old.get(key, missing)} in the file, {new.get(key, missing)} now"
        for key in sorted(old.keys() | new.keys())
        if old.get(key) != new.get(key) and not (out and key.startswith("methods."))
    ]


def _unhashed(key: str) -> bool:
    return key.split(".", 1)[0] in _UNHASHED


def _effective(preset: Preset, methods: Sequence[ResolvedMethod]) -> dict[str, Any]:
    data = preset.model_dump(mode="json")
    data["methods"] = [
        {"name": m.info.name, "label": m.label, "params": m.params.model_dump(mode="json")}
        for m in methods
    ]
    return data


# ----------------------------------------------------------------------------- finding files


def builtin_preset_dir() -> Path:
    """Presets shipped with specbench: inside the wheel, or ``presets/`` of a source tree."""
    packaged = Path(__file__).parent.parent / "_presets"
    if packaged.is_dir():
        return packaged
    return Path(__file__).resolve().parents[2] / "presets"


def preset_dirs() -> list[Path]:
    """Where preset names are looked up, first match wins."""
    dirs = [Path.cwd() / "presets"]
    dirs += [Path(p) for p in os.environ.get(PRESET_PATH_ENV, "").split(os.pathsep) if p]
    dirs.append(builtin_preset_dir())
    unique: list[Path] = []
    for d in dirs:
        if d.is_dir() and d.resolve() not in [u.resolve() for u in unique]:
            unique.append(d)
    return unique


def available_presets() -> dict[str, Path]:
    """Every preset name that can be run, with the file it comes from."""
    found: dict[str, Path] = {}
    for directory in preset_dirs():
        for path in sorted(directory.iterdir()):
            if format_of(path.suffix) is not None:
                found.setdefault(path.stem, path)
    return found


def find_preset(name_or_path: str) -> Path:
    """A preset file from a path or a preset name."""
    candidate = Path(name_or_path)
    if format_of(candidate.suffix) is not None or os.sep in name_or_path:
        if candidate.is_file():
            return candidate
        raise SpecbenchError(
            f"preset file {name_or_path} does not exist", "check the path, or give a preset name"
        )
    presets = available_presets()
    if name_or_path in presets:
        return presets[name_or_path]
    names = ", ".join(sorted(presets)) or "none found"
    raise SpecbenchError(
        f"no preset named '{name_or_path}' (available: {names})",
        "run `specbench presets` to list them, or pass the path of a .toml, .yaml or .json file",
    )


# ----------------------------------------------------------------------------- loading


def read_preset_file(path: Path) -> dict[str, Any]:
    """Parse a TOML, YAML or JSON preset (by extension); syntax errors become a one-line
    :class:`PresetError` with the line the parser names."""
    fmt = format_of(path.suffix) or "toml"
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as error:
        raise SpecbenchError(f"cannot read {path}: {error.strerror}", "check the path") from error
    try:
        return parse(text, fmt)
    except PresetSyntaxError as error:
        raise PresetError(
            str(path), [PresetIssue("", str(error), "fix the syntax there", error.line)]
        ) from error


def _with_lines(error: PresetError, path: Path) -> PresetError:
    """The same issues with the YAML line of each field path."""
    if format_of(path.suffix) != "yaml":
        return error
    lines = yaml_lines(path.read_text(encoding="utf-8"))
    issues = [replace(i, line=i.line or line_of(i.path, lines)) for i in error.issues]
    return PresetError(error.source, issues)


def parse_override(assignment: str, origin: str | None = None) -> Override:
    """``"sampling.temperature=0.7"`` to ``("sampling.temperature", 0.7)``; ``origin`` says
    where the text came from (default: ``--set <text>``).

    The value is read as a TOML value when it parses as one (numbers, booleans, arrays,
    quoted strings, inline tables ``{ k = 4 }``), else as JSON (``{"k": 4}``, ``null``), and
    as a bare string otherwise (``--set prompts.path=data/q.jsonl``).
    """
    key, sep, text = assignment.partition("=")
    if not sep or not key.strip():
        raise SpecbenchError(
            f"--set {assignment!r} is not KEY=VALUE", "write e.g. --set sampling.temperature=0.7"
        )
    try:
        value = tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        try:
            value = json.loads(text)
        except ValueError:
            value = text
    return Override(key.strip(), value, origin or f"--set {assignment}")


def apply_overrides(raw: dict[str, Any], overrides: Iterable[OverrideLike]) -> dict[str, Any]:
    """A copy of ``raw`` with dotted keys set.

    A list is indexed by number (``methods.0.params.k``) or, for methods, by label or name
    (``methods.speculative.params.k``). Setting ``prompts.source``, or a prompt field the
    current source does not have (``prompts.path`` on inline prompts), switches the prompt
    source: fields the new source does not take are dropped."""
    data: dict[str, Any] = copy.deepcopy(raw)
    for dotted, value, *_ in overrides:
        node: Any = data
        parts = dotted.split(".")
        if parts[0] == "prompts" and len(parts) == 2 and isinstance(data.get("prompts"), dict):
            data["prompts"] = _switch_prompt_source(data["prompts"], parts[1], value)
        for depth, part in enumerate(parts[:-1]):
            if isinstance(node, list):
                node = node[_list_position(node, part, dotted, parts[:depth])]
            elif isinstance(node, dict):
                node = node.setdefault(part, {})
            else:
                raise SpecbenchError(
                    f"--set {dotted}: {'.'.join(parts[:depth])} is a value, not a table",
                    "set the value itself, e.g. --set sampling.temperature=0.7",
                )
        last = parts[-1]
        if isinstance(node, list):
            node[_list_position(node, last, dotted, parts[:-1])] = value
        elif isinstance(node, dict):
            node[last] = value
        else:
            raise SpecbenchError(
                f"--set {dotted}: {'.'.join(parts[:-1])} is a value, not a table",
                "set the value itself",
            )
    return data


def _list_position(node: list[Any], part: str, dotted: str, before: Sequence[str]) -> int:
    where = ".".join(before) or "the list"
    if part.isdigit():
        if int(part) >= len(node):
            raise SpecbenchError(
                f"--set {dotted}: {where} has only {len(node)} entries", "index from 0"
            )
        return int(part)
    for key in ("label", "name"):  # methods by label first, then by name
        found = [
            i for i, item in enumerate(node) if isinstance(item, dict) and item.get(key) == part
        ]
        if len(found) == 1:
            return found[0]
    raise SpecbenchError(
        f"--set {dotted}: no entry of {where} has the label or name '{part}'",
        "use an entry's label, or its position from 0",
    )


def _switch_prompt_source(table: dict[str, Any], field: str, value: Any) -> dict[str, Any]:
    """The prompt table after setting ``field``: the same source when it has the field, else
    the source that has it (``path``: jsonl for .jsonl files, else dataset)."""
    from specbench.prompts.sources import source_model, sources_with

    current = source_model(table.get("source"))
    if field == "source":
        target = source_model(value)
    elif current is not None and field in current.model_fields:
        return table
    else:
        candidates = sources_with(field)
        if field == "path" and isinstance(value, str):
            wanted = "jsonl" if value.lower().endswith(".jsonl") else "dataset"
            candidates = [c for c in candidates if c == wanted] or candidates
        if len(candidates) != 1:
            return table  # unknown or ambiguous: validation names the field
        target = source_model(candidates[0])
        value = candidates[0]
        field = "source"
    if target is None:
        return table  # an unknown source: validation lists the known ones
    kept = {k: v for k, v in table.items() if k in target.model_fields}
    return {**kept, field: value}


def load_preset(
    name_or_path: str,
    registry: MethodRegistry,
    overrides: Iterable[OverrideLike] = (),
) -> ResolvedPreset:
    """Find, read, override and validate a preset."""
    path = find_preset(name_or_path)
    given = [Override(*item) for item in overrides]
    raw = read_preset_file(path)
    refuse_foreign_config(raw, path)
    raw = apply_overrides(raw, given)
    raw.setdefault("name", path.stem)
    try:
        return validate_preset(raw, source=str(path), registry=registry, base_dir=path.parent)
    except PresetError as error:
        raise _with_origins(_with_lines(error, path), given) from None


def _with_origins(error: PresetError, overrides: Sequence[Override]) -> PresetError:
    """Issues about a value an override set name the flag that set it, not the file."""

    def origin(issue: PresetIssue) -> str | None:
        dotted = re.sub(r"\[(\d+)\]", r".\1", issue.path)
        for override in reversed(overrides):  # the last one set wins
            if override.origin and (dotted + ".").startswith(override.key + "."):
                return str(override.origin)
        return None

    issues = [replace(i, origin=origin(i)) for i in error.issues]
    return PresetError(error.source, issues)


def refuse_foreign_config(raw: Mapping[str, Any], path: Path) -> None:
    """A file in another tool's style gets one line naming the import command, not one
    "extra inputs" line per key."""
    shape = recognise(raw)
    if shape is None:
        return
    target = path.with_name(f"{path.stem}-specbench.toml")
    raise PresetError(
        str(path),
        [
            PresetIssue(
                "",
                f"this looks like {shape}, not a specbench preset",
                f"convert it with `specbench presets import {path} -o {target}`",
            )
        ],
    )


def write_imported(
    path: Path, registry: MethodRegistry, output: Path | None
) -> list[tuple[Path | None, str, list[str]]]:
    """``specbench presets import``: the presets a foreign config maps to, validated.

    Returns ``(file, text, problems)`` per preset: ``file`` is ``None`` for standard output
    (one preset and no ``output``); ``problems`` are validation issues of the result (model
    folders are not checked here). Unmapped fields become comments (TOML, YAML) or the
    description (JSON, which has no comments)."""
    raw = read_preset_file(path)
    if recognise(raw) is None:
        try:
            validate_preset(raw, source=str(path), registry=registry, base_dir=path.parent)
        except PresetError:
            hint = "write a preset from `specbench presets show quickstart`"
            raise SpecbenchError(
                f"{path} is in none of the shapes import knows (a vLLM study config, a "
                "draft/target config, a JSON file of models, methods and experiments)",
                hint,
            ) from None
        raise SpecbenchError(f"{path} is already a specbench preset", "run it as it is")
    shape, imported = import_config(raw, path.stem, vllm_installed="vllm" in registry.methods)
    if not imported:
        raise SpecbenchError(f"{path} ({shape}) holds no experiment to import", "add one")
    fmt = format_of(output.suffix) if output is not None else "toml"
    if fmt is None:
        raise SpecbenchError(
            f"--output {output} has no preset extension", "end it in .toml, .yaml or .json"
        )
    out = []
    for item in imported:
        target = output
        if output is not None and len(imported) > 1:
            target = output.with_name(f"{output.stem}-{item.name}{output.suffix}")
        header = [f"Imported from {path} ({shape}) by `specbench presets import`."]
        notes = [f"not mapped: {line}" for line in item.unmapped]
        data = dict(item.preset)
        if fmt == "json":
            data["description"] = " ".join([*header, *notes])
            text = dump(data, fmt)
        else:
            data.setdefault("description", f"imported from {path.name}")
            text = "".join(f"# {line}\n" for line in [*header, *notes]) + dump(data, fmt)
        base = target.parent if target is not None else path.parent
        try:
            validate_preset(data, source=str(target or path), registry=registry, base_dir=base)
            problems: list[str] = []
        except PresetError as error:
            problems = str(error).splitlines()
        out.append((target, text, problems))
    return out


# ----------------------------------------------------------------------------- validation


def validate_preset(
    raw: Mapping[str, Any], source: str, registry: MethodRegistry, base_dir: Path
) -> ResolvedPreset:
    """Check schema, references and method needs; raise :class:`PresetError` with every issue.

    Methods are checked even when another section fails the schema, so one pass of
    ``specbench validate`` lists every problem of the file.
    """
    issues: list[PresetIssue] = []
    preset: Preset | None = None
    try:
        preset = Preset.model_validate(raw)
    except ValidationError as error:
        # Methods are reported by _resolve_methods, which also checks their parameters.
        issues += _issues_from(error, raw, skip_top=("methods",))
    skipped: list[tuple[str, str]] = []
    methods = _resolve_methods(raw, registry, issues, skipped)
    if preset is not None and preset.runs.concurrency is not None:
        methods, preset = _load_levels(preset, methods, preset.runs.concurrency, issues)
    if preset is not None:
        issues += _check_references(preset, methods, base_dir)
    if issues or preset is None:
        raise PresetError(source, issues)
    return ResolvedPreset(
        preset=preset,
        methods=methods,
        source=source,
        base_dir=base_dir,
        hash=_preset_hash(_effective(preset, methods)),
        skipped=tuple(skipped),
    )


_METHOD_LIST = TypeAdapter(list[MethodEntry])


def _resolve_methods(
    raw: Mapping[str, Any],
    registry: MethodRegistry,
    issues: list[PresetIssue],
    skipped: list[tuple[str, str]],
) -> list[ResolvedMethod]:
    """Bind each method entry to an installed method and validate its parameters; for
    ``methods = "all"``, say in ``skipped`` which installed methods were left out and why."""
    raw_models = raw.get("models")
    has_draft = isinstance(raw_models, dict) and raw_models.get("draft") is not None
    have = {ModelRole.TARGET} | ({ModelRole.DRAFT} if has_draft else set())
    raw_methods = raw.get("methods", "all")
    if isinstance(raw_methods, str) and raw_methods != "all":
        issues.append(
            PresetIssue(
                "methods", f"unknown value {raw_methods!r}", 'write "all" or [[methods]] tables'
            )
        )
        return []
    if raw_methods == "all":  # every installed method the models can serve
        baseline = raw.get("runs", {}).get("baseline", "baseline")
        usable = []
        for info in registry.methods.values():
            missing = sorted(role.value for role in info.needs - have)
            if missing:
                skipped.append((info.name, f"needs a {' and a '.join(missing)} model"))
            elif not info.cls.in_all:
                reason = info.cls.not_in_all_reason or "its plugin leaves it out of all"
                skipped.append((info.name, reason))
            else:
                usable.append(info)
        skipped += [(b.name, f"failed to load: {b.error}") for b in registry.broken]
        # The baseline first: it is what every other row is compared with.
        usable.sort(key=lambda info: info.name != baseline)
        return [ResolvedMethod(label=i.name, info=i, params=i.cls.Params()) for i in usable]
    try:
        entries = _METHOD_LIST.validate_python(raw_methods)
    except ValidationError as error:
        issues += _issues_from(error, raw_methods, prefix="methods", root=MethodEntry)
        return []
    resolved: list[ResolvedMethod] = []
    seen: set[str] = set()
    for i, entry in enumerate(entries):
        where = f"methods[{i}]"
        try:
            info = registry.get(entry.name)
        except PluginError as error:
            issues.append(PresetIssue(f"{where}.name", error.message, error.hint or ""))
            continue
        if entry.key in seen:
            issues.append(
                PresetIssue(
                    f"{where}.label",
                    f"'{entry.key}' is used by an earlier method",
                    'give each entry of the same method its own label = "..."',
                )
            )
        seen.add(entry.key)
        missing = sorted(role.value for role in info.needs - have)
        if missing:
            issues.append(
                PresetIssue(
                    where,
                    f"method '{entry.name}' needs a {' and '.join(missing)} model "
                    "and the preset has none",
                    f"add a [models.{missing[0]}] table",
                )
            )
        try:
            params = info.cls.Params.model_validate(entry.params)
        except ValidationError as error:
            issues += _issues_from(
                error, entry.params, prefix=f"{where}.params", root=info.cls.Params
            )
            continue
        resolved.append(ResolvedMethod(label=entry.key, info=info, params=params))
    return resolved


CONCURRENCY = "concurrency"


def level_label(label: str, level: int) -> str:
    """The label of ``label`` at load level ``level``."""
    return f"{label}@c{level}"


def _load_levels(
    preset: Preset, methods: list[ResolvedMethod], levels: list[int], issues: list[PresetIssue]
) -> tuple[list[ResolvedMethod], Preset]:
    """``runs.concurrency``: one copy per level of every method with a ``concurrency``
    parameter; a baseline naming such a method names its first level."""
    expanded: list[ResolvedMethod] = []
    renamed: dict[str, str] = {}
    for method in methods:
        if not _takes(method, CONCURRENCY):
            expanded.append(method)
            continue
        renamed[method.label] = level_label(method.label, levels[0])
        for level in levels:
            try:
                label = level_label(method.label, level)
                expanded.append(_with_value(method, CONCURRENCY, level, label))
            except ValidationError as error:
                issues.append(
                    PresetIssue(
                        "runs.concurrency",
                        f"{level} is not valid for {method.label}: {error.errors()[0]['msg']}",
                        "choose levels the method accepts",
                    )
                )
    if not renamed and methods:
        issues.append(
            PresetIssue(
                "runs.concurrency",
                "no method of this preset takes a concurrency (server methods do)",
                "remove it, or add a server method",
            )
        )
    if preset.runs.baseline in renamed:
        runs = preset.runs.model_copy(update={"baseline": renamed[preset.runs.baseline]})
        preset = preset.model_copy(update={"runs": runs})
    return expanded, preset


def _takes(method: ResolvedMethod, name: str) -> bool:
    return name in method.info.cls.Params.model_fields


def _with_value(method: ResolvedMethod, name: str, value: Any, label: str) -> ResolvedMethod:
    """A copy of ``method`` labelled ``label`` whose parameter ``name`` is ``value``
    (validated: a ``ValidationError`` if the method refuses it)."""
    params = method.info.cls.Params.model_validate({**method.params.model_dump(), name: value})
    return replace(method, label=label, params=params)


def _check_references(
    preset: Preset, methods: list[ResolvedMethod], base_dir: Path
) -> list[PresetIssue]:
    issues: list[PresetIssue] = []
    labels = [m.label for m in methods]
    if "baseline" in preset.runs.model_fields_set and preset.runs.baseline not in labels:
        issues.append(
            PresetIssue(
                "runs.baseline",
                f"'{preset.runs.baseline}' is not one of the methods ({', '.join(labels)})",
                "name the label of a method in this preset",
            )
        )
    prompt_issues = [
        PresetIssue(f"prompts.{field}", message, hint)
        for field, message, hint in preset.prompts.check(base_dir)
    ]
    if not prompt_issues:
        prompt_issues = [
            PresetIssue(field, message, hint)
            for field, message, hint in preset.prompts.check_contents(base_dir)
        ]
    return issues + prompt_issues


_UNHASHED = ("output", "cluster")


def _preset_hash(effective: dict[str, Any]) -> str:
    """Hash of what determines the results (where they go and where they run do not)."""
    relevant = {k: v for k, v in effective.items() if k not in _UNHASHED}
    blob = json.dumps(relevant, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def select_methods(resolved: ResolvedPreset, labels: Sequence[str]) -> ResolvedPreset:
    """Keep only the methods with these labels (``--methods``)."""
    known = [m.label for m in resolved.methods]
    # A method run at several load levels is selected by its own label too.
    levels = resolved.preset.runs.concurrency or []
    labels = [
        chosen
        for label in labels
        for chosen in ([label] if label in known else _levels_of(label, levels, known) or [label])
    ]
    unknown = [label for label in labels if label not in known]
    if unknown:
        raise SpecbenchError(
            f"--methods names {', '.join(unknown)}, not in preset '{resolved.name}' "
            f"(it has: {', '.join(known)})",
            "use labels from the preset",
        )
    methods = [m for m in resolved.methods if m.label in labels]
    return replace(
        resolved, methods=methods, hash=_preset_hash(_effective(resolved.preset, methods))
    )


def first_level_only(resolved: ResolvedPreset) -> ResolvedPreset:
    """Without the load levels after the first (``runs.concurrency``): what the audit checks,
    since a level changes how many requests are in flight, not what a request returns."""
    levels = resolved.preset.runs.concurrency
    if not levels or len(levels) < 2:
        return resolved
    methods = [
        m
        for m in resolved.methods
        if not _takes(m, CONCURRENCY) or getattr(m.params, CONCURRENCY) == levels[0]
    ]
    return replace(
        resolved, methods=methods, hash=_preset_hash(_effective(resolved.preset, methods))
    )


def _levels_of(label: str, levels: Sequence[int], known: Sequence[str]) -> list[str]:
    return [level_label(label, level) for level in levels if level_label(label, level) in known]


def sweep_parameter(resolved: ResolvedPreset, name: str, values: Sequence[Any]) -> ResolvedPreset:
    """Replace every method that has parameter ``name`` by one copy per value (``--sweep``).

    Copies are labelled ``<label>-<name>=<value>``; methods without the parameter stay.
    """
    methods: list[ResolvedMethod] = []
    swept = False
    for method in resolved.methods:
        if not _takes(method, name):
            methods.append(method)
            continue
        swept = True
        for value in values:
            shown = f"{value:g}" if isinstance(value, float) else str(value)
            try:
                methods.append(_with_value(method, name, value, f"{method.label}-{name}={shown}"))
            except ValidationError as error:
                message = error.errors()[0]["msg"]
                raise SpecbenchError(
                    f"--sweep {name}={value} is not valid for {method.label}: {message}",
                    "choose values the method accepts (see `specbench methods NAME`)",
                ) from None
    if not swept:
        raise SpecbenchError(
            f"no method in preset '{resolved.name}' has a parameter '{name}'",
            "check the name with `specbench methods NAME`",
        )
    return replace(
        resolved, methods=methods, hash=_preset_hash(_effective(resolved.preset, methods))
    )


def parse_sweep(text: str) -> tuple[str, list[Any]]:
    """``"threshold=0.1,0.3"`` to ``("threshold", [0.1, 0.3])`` (values read as TOML)."""
    name, sep, raw = text.partition("=")
    if not sep or not name.strip() or not raw.strip():
        raise SpecbenchError(f"--sweep {text!r} is not NAME=V1,V2", "write e.g. --sweep k=2,4,8")
    return name.strip(), [parse_override(f"v={item}")[1] for item in raw.split(",")]


# ----------------------------------------------------------------------------- error text

_HINTS = {
    "missing": "add this field",
    "extra_forbidden": "remove it or correct its spelling",
    "literal_error": "use one of the values named",
    "union_tag_invalid": "use one of the values named",
    "union_tag_not_found": "add the field that names the kind of entry",
    "greater_than": "use a larger value",
    "greater_than_equal": "use a larger value",
    "less_than": "use a smaller value",
    "less_than_equal": "use a smaller value",
    "int_parsing": "write a whole number without quotes",
    "int_type": "write a whole number without quotes",
    "int_from_float": "write a whole number",
    "float_parsing": "write a number without quotes",
    "float_type": "write a number without quotes",
    "bool_parsing": "write true or false",
    "bool_type": "write true or false",
    "string_type": 'write a quoted string, e.g. "text"',
    "list_type": "write a list, e.g. [1, 2]",
    "dict_type": "write a table",
    "model_type": "write a table",
    "value_error": "see the message",
}


#: Separates a parameter validator's problem from its fix in a ``ValueError`` message.
FIX_MARK = "; fix: "


def _issues_from(
    error: ValidationError,
    raw: Any,
    prefix: str = "",
    root: type[BaseModel] | None = None,
    skip_top: Sequence[str] = (),
) -> list[PresetIssue]:
    """Issues from a pydantic error on ``raw``, validated by the model ``root`` (Preset).

    ``skip_top`` drops errors under those top-level keys (reported elsewhere); it compares the
    key itself, so a stray key that merely looks like one (``methods[0]``) is still reported.
    """
    issues = []
    for item in error.errors():
        if item["loc"][:1] and item["loc"][0] in skip_top:
            continue
        path = _display_path(item["loc"], raw)
        if prefix:
            path = prefix + ("" if path.startswith("[") or not path else ".") + path
        message = item["msg"]
        if message.startswith("Value error, "):
            message = message[len("Value error, ") :]
        hint = _HINTS.get(item["type"], "compare with `specbench presets show quickstart`")
        if item["type"] == "value_error" and FIX_MARK in message:
            # A validator's message may carry its own fix: "what is wrong; fix: what to do".
            message, hint = message.split(FIX_MARK, 1)
        if item["type"] == "union_tag_not_found":
            field = str(item.get("ctx", {}).get("discriminator", "")).strip("'")
            hint = (
                f"add {field} = ... naming the kind (compare `specbench presets show quickstart`)"
            )
        if item["type"] == "extra_forbidden":
            allowed = _allowed_keys(item["loc"][:-1], raw, root or Preset)
            if allowed:
                hint += f" (allowed here: {', '.join(allowed)})"
        issues.append(PresetIssue(path, message, hint))
    return issues


def _display_path(loc: Sequence[int | str], raw: Any) -> str:
    """``("methods", 1, "params", "k")`` to ``methods[1].params.k``, dropping union tags.

    pydantic puts the tag of a discriminated union in the location (``models.target.toy``);
    a tag is recognisable as a location step that is not a key of the raw table but one of
    its values.
    """
    text = ""
    node = raw
    for step in loc:
        if isinstance(step, int):
            text += f"[{step}]"
            node = node[step] if isinstance(node, list) and step < len(node) else None
            continue
        if isinstance(node, dict) and step not in node and step in node.values():
            continue
        text += f".{step}" if text else step
        node = node.get(step) if isinstance(node, dict) else None
    return text


def _allowed_keys(loc: Sequence[int | str], raw: Any, root: type[BaseModel]) -> list[str]:
    """Field names of the model at ``loc`` (best effort, for the extra-field hint)."""
    model: Any = root
    node = raw
    for step in loc:
        if isinstance(step, int):
            node = node[step] if isinstance(node, list) and step < len(node) else None
            continue
        if isinstance(node, dict) and step not in node and step in node.values():
            continue
        node = node.get(step) if isinstance(node, dict) else None
        model = _field_model(model, step, node)
        if model is None:
            return []
    return sorted(model.model_fields) if model is not None else []


def _field_model(model: Any, field: str, value: Any) -> Any:
    """The pydantic model behind ``model.field``, choosing a union member by its tag."""
    if not (isinstance(model, type) and issubclass(model, BaseModel)):
        return None
    info = model.model_fields.get(field)
    if info is None:
        return None
    for candidate in _model_types(info.annotation):
        if not isinstance(value, dict) or all(
            value.get(name) in get_args(f.annotation)
            for name, f in candidate.model_fields.items()
            if get_origin(f.annotation) is Literal
        ):
            return candidate
    return None


def _model_types(annotation: Any) -> list[type[BaseModel]]:
    """pydantic models inside an annotation (through Optional, unions, lists, Annotated)."""
    if annotation is ModelSpecBase:  # a model table: any installed backend's spec
        from specbench.models.backends import discover_backends

        return [backend.Spec for backend in discover_backends().backends.values()]
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    return [model for arg in get_args(annotation) for model in _model_types(arg)]
