"""The model-backend plugin interface, and how backends are discovered.

Writing a backend
=================
A backend turns a ``[models.target]`` / ``[models.draft]`` table into a loaded
:class:`~specbench.models.base.LanguageModel`. It is a subclass of :class:`ModelBackend`:

* ``name``: the value presets write as ``backend = "..."`` (the entry point's name too).
* ``description``: one line for ``specbench methods``.
* ``Spec``: a pydantic model, subclass of :class:`~specbench.models.specs.ModelSpecBase`,
  with ``backend: Literal["<name>"] = "<name>"`` and the backend's fields. Presets are
  validated against it, so a typo is reported with its field path before anything loads.
* ``load(spec, role)``: load the model (``role`` is ``"target"`` or ``"draft"``).
* ``load_tokenizer(spec, local_only)``: only the tokenizer (``validate``, and runs whose
  methods need no in-process model, such as external engines); ``local_only`` forbids
  downloads.
* optional ``unavailable_reason(spec)``: why the files are not here yet (a model not
  downloaded); ``validate`` then notes it instead of failing.
* optional ``identity(spec)``: what identifies the weights, for cache keys (trained judges).
* optional ``notes(spec, role)``: what a benchmark of this model should know although the
  table is valid (a toy model that costs nothing); ``validate`` and ``run`` print them.

Register it in the plugin's ``pyproject.toml``::

    [project.entry-points."specbench.backends"]
    my-backend = "my_package.backend:MyBackend"

specbench's own ``toy``, ``hf`` and ``dummy`` backends register the same way.
"""

from __future__ import annotations

import functools
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, ClassVar

from specbench.entry_points import load_entry_points
from specbench.errors import ModelLoadError
from specbench.models.base import LanguageModel, Tokenizer
from specbench.models.spec_base import ModelSpecBase

BACKEND_GROUP = "specbench.backends"


class ModelBackend(ABC):
    """A way to load models; see the module docstring."""

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    Spec: ClassVar[type[ModelSpecBase]] = ModelSpecBase

    @abstractmethod
    def load(self, spec: Any, role: str) -> LanguageModel:
        """Load the model ``spec`` describes; ``role`` names it in errors and records."""

    @abstractmethod
    def load_tokenizer(self, spec: Any, local_only: bool = True) -> Tokenizer:
        """Only the tokenizer of ``spec``; with ``local_only`` nothing is downloaded."""

    def unavailable_reason(self, spec: Any) -> str | None:
        """Why ``spec``'s files are not here yet (not an error), or ``None``."""
        return None

    def notes(self, spec: Any, role: str) -> list[str]:
        """Warnings about a valid table that would make a benchmark say little; none by
        default."""
        return []

    def identity(self, spec: Any) -> dict[str, Any]:
        """What identifies the model's weights (cache keys): by default the spec itself."""
        identity: dict[str, Any] = spec.model_dump(mode="json")
        return identity


@dataclass
class BackendRegistry:
    """Every backend found in the ``specbench.backends`` entry-point group."""

    backends: dict[str, ModelBackend] = field(default_factory=dict)
    broken: dict[str, str] = field(default_factory=dict)

    def get(self, name: str) -> ModelBackend:
        """The backend called ``name``, or a one-line error naming what is installed."""
        if name in self.backends:
            return self.backends[name]
        if name in self.broken:
            raise ModelLoadError(
                f"model backend '{name}' failed to load: {self.broken[name]}",
                "reinstall the package that provides it",
            )
        installed = ", ".join(sorted(self.backends)) or "none"
        raise ModelLoadError(
            f"no model backend named '{name}' is installed (installed: {installed})",
            "check the spelling, or pip install the plugin that provides it",
        )


def discover_backends(*, refresh: bool = False) -> BackendRegistry:
    """Load every backend registered under ``specbench.backends`` (cached)."""
    if refresh:
        _discover.cache_clear()
    return _discover()


@functools.cache
def _discover() -> BackendRegistry:
    group = load_entry_points(BACKEND_GROUP, ModelBackend)
    return BackendRegistry(
        backends={name: entry.cls() for name, entry in group.loaded.items()},
        broken={name: entry.error for name, entry in group.broken.items()},
    )


def backend_of(spec: ModelSpecBase) -> ModelBackend:
    """The backend that loads ``spec``."""
    return discover_backends().get(spec.backend)


def model_identity(spec: ModelSpecBase) -> dict[str, Any]:
    """A model spec plus a fingerprint of its weights where they are local files."""
    return backend_of(spec).identity(spec)
