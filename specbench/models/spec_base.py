"""The base of every backend's model spec: specs.py (the built-in backends' specs) and
backends.py (the backend interface, whose ``StrictSpec`` defaults to it) both build on it."""

from __future__ import annotations

import importlib.util
from typing import Literal

from pydantic import BaseModel, ConfigDict

DType = Literal["auto", "bfloat16", "float16", "float32"]


class StrictSpec(BaseModel):
    """A preset table: unknown fields are errors, values are frozen."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    def requirements(self) -> list[tuple[str, str]]:
        """Python modules this spec needs, each with the specbench extra that installs it."""
        return []


class ModelSpecBase(StrictSpec):
    """Base of every backend's model spec; ``backend`` names the backend that loads it."""

    backend: str


def missing_requirements(spec: StrictSpec) -> list[tuple[str, str]]:
    """The ``(module, extra)`` pairs of ``spec`` that are not importable here."""
    return [(m, extra) for m, extra in spec.requirements() if importlib.util.find_spec(m) is None]
