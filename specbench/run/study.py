"""Studies: several presets (each with its own overrides and sweeps) run in one command into one
output directory, one JSONL per entry plus ``index.json``; ``report DIR`` compares them.

A study file (TOML, YAML or JSON)::

    name = "pairs"
    description = "..."
    [[entries]]
    preset = "toy-greedy"
    label = "greedy"                       # file name; default: the preset's name
    set = ["sampling.max_new_tokens=32"]   # like --set
    sweep = ["k=2,4"]                      # like --sweep

``specbench run -p A -p B -p C`` builds the same from preset names. Entries run in order;
``--resume`` continues the newest directory of the study (or ``--output DIR``): finished
entries are skipped, an interrupted one resumes where it stopped.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from specbench.errors import SpecbenchError
from specbench.plugins import MethodRegistry
from specbench.presets.formats import PresetSyntaxError, format_of, parse
from specbench.presets.schema import (
    OverrideLike,
    ResolvedPreset,
    load_preset,
    parse_override,
    parse_sweep,
    sweep_parameter,
)
from specbench.run.output_paths import check_output_dir
from specbench.run.progress import ProgressCallback
from specbench.run.runner import RunOutcome, run_preset

INDEX = "index.json"


class StudyEntry(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    preset: str
    label: str | None = Field(None, pattern=r"^[A-Za-z0-9._-]+$")
    set: list[str] = Field(default_factory=list)
    sweep: list[str] = Field(default_factory=list)


class Study(BaseModel):
    """Presets to run one after another into one directory."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(pattern=r"^[A-Za-z0-9._-]+$")
    description: str = ""
    entries: list[StudyEntry] = Field(min_length=1)
    output: str = "results/{study}-{timestamp}"


def load_study(path: Path) -> Study:
    """Read and validate a study file; errors name the file and the field."""
    fmt = format_of(path.suffix)
    if fmt is None:
        raise SpecbenchError(f"{path}: unknown study format", "use .toml, .yaml or .json")
    try:
        raw = parse(path.read_text(encoding="utf-8"), fmt)
    except OSError as error:
        raise SpecbenchError(f"cannot read {path}: {error.strerror}", "check the path") from error
    except PresetSyntaxError as error:
        line = f":{error.line}" if error.line else ""
        raise SpecbenchError(f"{path}{line}: {error}", "fix the syntax there") from error
    raw.setdefault("name", path.stem)
    try:
        return Study.model_validate(raw)
    except ValidationError as error:
        first = error.errors()[0]
        where = ".".join(str(part) for part in first["loc"])
        raise SpecbenchError(f"{path}: {where}: {first['msg']}", "see the study schema") from None


def study_of_presets(presets: Sequence[str]) -> Study:
    """The study ``run -p A -p B`` means."""
    name = "study-" + "-".join(re.sub(r"[^A-Za-z0-9._-]", "_", Path(p).stem) for p in presets)
    return Study(name=name[:80], entries=[StudyEntry(preset=p) for p in presets])


def resolve_entries(
    study: Study, registry: MethodRegistry, common: Sequence[OverrideLike] = ()
) -> list[tuple[str, ResolvedPreset]]:
    """Every entry validated (before anything runs), with its unique label."""
    out: list[tuple[str, ResolvedPreset]] = []
    for entry in study.entries:
        overrides = list(common) + [
            parse_override(text, f"set '{text}' of study {study.name}") for text in entry.set
        ]
        resolved = load_preset(entry.preset, registry, overrides)
        for text in entry.sweep:
            resolved = sweep_parameter(resolved, *parse_sweep(text))
        label = entry.label or resolved.name
        if label in {existing for existing, _ in out}:
            raise SpecbenchError(
                f"study {study.name}: two entries are called '{label}'",
                "give one of them its own label",
            )
        out.append((label, resolved))
    return out


def study_dir(study: Study, output: Path | None, resume: bool) -> Path:
    """The study's directory: explicit, the newest one to resume, or a new one; checked
    (and made) here, before any model loads."""
    if output is not None:
        check_output_dir(output, "--output")
        return output
    pattern = study.output.replace("{study}", study.name)
    if resume:
        matches = sorted(p for p in Path().glob(pattern.replace("{timestamp}", "*")) if p.is_dir())
        if not matches:
            raise SpecbenchError(
                f"no earlier directory of study '{study.name}' to resume (looked for {pattern})",
                "pass the directory with --output, or drop --resume",
            )
        return matches[-1]
    directory = Path(pattern.replace("{timestamp}", datetime.now().strftime("%Y%m%d-%H%M%S")))
    check_output_dir(directory, f"output of study {study.name}")
    return directory


@dataclass
class StudyOutcome:
    directory: Path
    outcomes: list[tuple[str, RunOutcome]]


def run_study(
    study: Study,
    entries: Sequence[tuple[str, ResolvedPreset]],
    directory: Path,
    resume: bool = False,
    on_progress: ProgressCallback | None = None,
    on_entry: Callable[[int, str, Path], None] | None = None,
    on_done: Callable[[str, RunOutcome], None] | None = None,
    runner: Callable[..., RunOutcome] = run_preset,
) -> StudyOutcome:
    """Run the entries in order, one JSONL each, keeping ``index.json`` up to date.

    ``on_entry`` hears each entry as it starts, ``on_done`` as it finishes; ``runner`` runs
    one entry (:func:`run_preset`, or a distributed runner)."""
    directory.mkdir(parents=True, exist_ok=True)
    index_path = directory / INDEX
    if index_path.exists() and not resume:
        raise SpecbenchError(
            f"{directory} already holds a study",
            "pass --resume to continue it, or another --output",
        )
    files = [directory / f"{i + 1:02d}-{label}.jsonl" for i, (label, _) in enumerate(entries)]
    index = _read_index(index_path) if resume else {}
    status = {e["label"]: e["status"] for e in index.get("entries", [])}

    def write_index() -> None:
        payload = {
            "study": study.name,
            "description": study.description,
            "created_at": index.get("created_at")
            or datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "entries": [
                {
                    "label": label,
                    "preset": resolved.source,
                    "preset_hash": resolved.hash,
                    "file": file.name,
                    "status": status.get(label, "pending"),
                }
                for (label, resolved), file in zip(entries, files, strict=True)
            ],
        }
        index["created_at"] = payload["created_at"]
        tmp = index_path.with_suffix(".partial")
        tmp.write_text(json.dumps(payload, indent=2) + "\n", encoding="utf-8")
        tmp.replace(index_path)

    write_index()
    outcomes = []
    for position, ((label, resolved), file) in enumerate(zip(entries, files, strict=True)):
        if on_entry is not None:
            on_entry(position, label, file)
        status[label] = "running"
        write_index()
        try:
            outcome = runner(
                resolved, output=file, resume=resume and file.exists(), on_progress=on_progress
            )
        except BaseException:
            status[label] = "interrupted"
            write_index()
            raise
        status[label] = "finished"
        write_index()
        outcomes.append((label, outcome))
        if on_done is not None:
            on_done(label, outcome)
    return StudyOutcome(directory, outcomes)


def _read_index(path: Path) -> dict[str, Any]:
    if not path.exists():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as error:
        raise SpecbenchError(f"cannot read {path}: {error}", "remove it to start over") from error
    return data if isinstance(data, dict) else {}


def study_files(directory: Path) -> list[Path]:
    """The results files of a study directory that hold anything, in study order."""
    index = _read_index(directory / INDEX)
    if not index:
        raise SpecbenchError(
            f"{directory} is not a study directory (no {INDEX})", "pass JSONL files"
        )
    files = [directory / entry["file"] for entry in index.get("entries", [])]
    present = [f for f in files if f.exists() and f.stat().st_size > 0]
    if not present:
        raise SpecbenchError(f"study {directory} has no results yet", "run or resume it first")
    return present
