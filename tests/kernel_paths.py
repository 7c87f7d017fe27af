"""The instruction paths of specbench's bf16 kernels as test parameters: a test given
``@pytest.mark.parametrize("isa", ISAS, indirect=True)`` and the ``isa`` fixture
(``conftest.py``) runs once on each path, skipping, with the reason, a path this CPU lacks."""

from __future__ import annotations

import pytest

from specbench.models import bf16_kernels

MISSING = bf16_kernels.unavailable_reason()
#: For a test that needs the kernel on whichever path this CPU takes.
needs_kernel = pytest.mark.skipif(MISSING is not None, reason=f"no bf16 kernel: {MISSING}")


def path_missing(isa: str) -> str | None:
    """Why path ``isa`` cannot run here, or ``None``."""
    if MISSING is not None:
        return f"no bf16 kernel: {MISSING}"
    return bf16_kernels.cpu_lacks(isa)


PATHS = ("avx512_bf16", "avx2")
ISAS = [
    pytest.param(isa, id=isa, marks=pytest.mark.skipif(bool(reason), reason=str(reason)))
    for isa in PATHS
    for reason in [path_missing(isa)]
]
