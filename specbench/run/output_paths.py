"""Checks that a results file or an output folder can be written, before any model loads.

Every command that writes (``run -o``, ``audit -o``, ``report --plots``/``--html``) calls
one of the two checks with ``source``, the flag or preset field the path came from, so the
one-line error names the real source and a fix. A missing parent folder is created only
below the working directory, the home directory or the temporary directory: elsewhere a
typo (``-o /resluts/x.jsonl``) would make a new folder at the top of the filesystem.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from specbench.errors import SpecbenchError

__all__ = ["check_output_dir", "check_output_file"]


def check_output_file(path: Path, source: str) -> None:
    """Make sure ``path`` can be created or appended to; create missing parent folders
    where that is allowed. Raises :class:`SpecbenchError` naming ``source`` otherwise."""
    if path.is_dir():
        raise SpecbenchError(
            f"{source} {path} is a folder, not a file",
            f"name a file, e.g. {source} {path / 'results.jsonl'}",
        )
    if path.exists() and not path.is_file():
        raise SpecbenchError(
            f"{source} {path} is not a regular file (results written there could not be read back)",
            f"name a file with {source}",
        )
    _ensure_folder(path.parent, source, path)
    try:
        if path.exists():
            with path.open("a", encoding="utf-8"):
                pass
        else:
            # A scratch file beside it, not the file itself: a file that appears and vanishes
            # under its own name broke a reader polling for it (exists, then gone).
            with tempfile.NamedTemporaryFile(dir=path.parent, prefix=".specbench-write-check-"):
                pass
    except OSError as error:
        raise _unwritable(path, source, error) from None


def check_output_dir(path: Path, source: str) -> None:
    """Make sure folder ``path`` exists (created where allowed) and takes new files."""
    if path.exists() and not path.is_dir():
        raise SpecbenchError(
            f"{source} {path} is a file, not a folder", f"name a folder with {source}"
        )
    _ensure_folder(path, source, path)
    try:
        with tempfile.NamedTemporaryFile(dir=path, prefix=".specbench-write-check-"):
            pass
    except OSError as error:
        raise _unwritable(path, source, error) from None


def _ensure_folder(folder: Path, source: str, target: Path) -> None:
    existing = folder
    while not existing.exists():
        if existing.is_symlink():  # a dangling link: mkdir would fail on it
            raise SpecbenchError(
                f"{source} {target}: {existing} is a broken link", f"choose another {source}"
            )
        existing = existing.parent
    if not existing.is_dir():
        raise SpecbenchError(
            f"{source} {target}: {existing} is a file, so nothing can be created below it",
            f"choose another {source}",
        )
    if existing == folder:
        return
    if not _may_create_below(existing):
        raise SpecbenchError(
            f"{source} {target}: folder {folder} does not exist",
            f"create it first (mkdir -p {folder}) or choose another {source}",
        )
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise _unwritable(folder, source, error, target) from None


def _may_create_below(existing: Path) -> bool:
    roots = [Path.cwd(), Path.home(), Path(tempfile.gettempdir())]
    resolved = existing.resolve()
    return any(resolved == r.resolve() or r.resolve() in resolved.parents for r in roots)


def _unwritable(
    path: Path, source: str, error: OSError, target: Path | None = None
) -> SpecbenchError:
    shown = f"{target} ({path})" if target is not None and target != path else str(path)
    return SpecbenchError(
        f"{source} {shown} cannot be written ({error.strerror or type(error).__name__})",
        f"choose a writable path with {source}",
    )
