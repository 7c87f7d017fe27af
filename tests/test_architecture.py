"""The package layout is an architecture, not a pile: pyproject's import contracts hold."""

from __future__ import annotations

from pathlib import Path

import pytest
from importlinter.cli import lint_imports

ROOT = Path(__file__).resolve().parent.parent


def test_import_contracts_hold(monkeypatch: pytest.MonkeyPatch) -> None:
    """Layers (cli > run/audit > ... > models > errors) and no import cycles anywhere."""
    monkeypatch.chdir(ROOT)
    assert lint_imports(config_filename=str(ROOT / "pyproject.toml"), no_cache=True) == 0


def test_plugins_contract_forbids_every_module_but_the_api() -> None:
    """A new top-level module is forbidden to plugins until it is added to specbench.api."""
    import pkgutil

    import tomllib

    import specbench

    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]
    (contract,) = [c for c in config["contracts"] if c["type"] == "forbidden"]
    modules = {f"specbench.{m.name}" for m in pkgutil.iter_modules(specbench.__path__)}
    public = {"specbench.api", "specbench.testing", "specbench.__main__"}
    assert set(contract["forbidden_modules"]) == modules - public
