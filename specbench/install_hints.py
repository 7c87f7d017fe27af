"""The one way fix hints say how to install something, in the README's form.

In a source checkout (a clone, where ``constraints/cpu.txt`` lies beside the package) every
install goes through the constraints file, or pip may replace the CPU build of torch with
several GB of CUDA wheels; an installed wheel gets the plain registry form.
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["install_extra", "install_path", "source_checkout"]


def source_checkout() -> Path | None:
    """The root of the clone specbench runs from, or ``None`` for an installed wheel."""
    root = Path(__file__).resolve().parent.parent
    if (root / "pyproject.toml").is_file() and (root / "constraints" / "cpu.txt").is_file():
        return root
    return None


def install_extra(extras: str) -> str:
    """The command that installs specbench's extras, e.g. ``install_extra("hf,report")``."""
    root = source_checkout()
    if root is None:
        return f"pip install 'specbench[{extras}]'"
    return f'pip install {_constraints(root)} -e "{_shown(root)}[{extras}]"'


def install_path(folder: str) -> str:
    """The command that installs a package folder of the clone (``plugins/...``)."""
    root = source_checkout()
    if root is None:
        return f"pip install -e {folder} (from a clone of specbench)"
    target = folder if _shown(root) == "." else str(root / folder)
    return f"pip install {_constraints(root)} -e {target}"


def _constraints(root: Path) -> str:
    return f"-c {Path(_shown(root)) / 'constraints' / 'cpu.txt'}"


def _shown(root: Path) -> str:
    """``.`` when run from the clone's root, as the README writes it; else the full path."""
    try:
        here = Path(os.getcwd()).resolve()
    except OSError:
        return str(root)
    return "." if here == root else str(root)
