from __future__ import annotations

from collections.abc import Iterator

import pytest

from specbench.plugins import discover_methods


@pytest.fixture(autouse=True)
def _fresh_registry() -> Iterator[None]:
    """Entry points are re-read for every test, so installs or sys.path changes show up."""
    discover_methods(refresh=True)
    yield
    discover_methods(refresh=True)
