"""Head checkpoints from a local folder or a hub repository, by one code path."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch

from specbench.errors import ModelLoadError
from specbench.install_hints import install_extra


def resolve_folder(source: str, kind: str, patterns: list[str], local_only: bool = False) -> Path:
    """A local folder, or a hub repository id fetched (or found in the hub cache) through
    huggingface_hub with only the files matching ``patterns``. ``kind`` names the head in
    errors ("Medusa heads", "EAGLE-3 head")."""
    local = Path(source).expanduser()
    if local.is_dir():
        return local
    if local.exists() or source.startswith((".", "/", "~")) or "/" not in source:
        raise ModelLoadError(
            f"{kind} {source!r} is not a folder here", "give a folder or a hub id (org/name)"
        )
    try:
        from huggingface_hub import snapshot_download
    except ImportError as error:
        hint = install_extra("hf")
        raise ModelLoadError("hub ids need huggingface_hub", hint) from error
    try:
        found = snapshot_download(source, allow_patterns=patterns, local_files_only=local_only)
    except Exception as error:
        raise ModelLoadError(
            f"{kind} {source} could not be found ({type(error).__name__})",
            "download it first, or give a local folder",
        ) from error
    return Path(found)


def read_state(folder: Path, names: Sequence[str], kind: str) -> dict[str, torch.Tensor]:
    """The state dict in the first of ``names`` found in ``folder`` (safetensors, or a
    PyTorch file read with ``weights_only``); a one-line error when none is there."""
    for name in names:
        path = folder / name
        if not path.is_file():
            continue
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state: dict[str, torch.Tensor] = load_file(str(path))
            return state
        loaded: dict[str, torch.Tensor] = torch.load(path, map_location="cpu", weights_only=True)
        return loaded
    raise ModelLoadError(f"{folder} holds no {' or '.join(names)}", f"a {kind} needs its weights")
