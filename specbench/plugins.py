"""The decoding-method plugin interface, and how methods are discovered.

Writing a method
================
A method is a subclass of :class:`DecodingMethod`:

* ``name``: what presets and the CLI call it (the entry point's name must match it).
* ``description``: one line for ``specbench methods``.
* ``needs``: the models it needs, e.g. ``{ModelRole.TARGET, ModelRole.DRAFT}``.
* ``Params``: a pydantic model (subclass :class:`MethodParams`) of its parameters. Presets
  are validated against it, so a typo or a bad value is reported with the preset's file
  and field path before anything loads.
* ``exact``: whether its output follows the target's distribution (greedy: equals greedy
  decoding); lossy methods set it to ``False`` and the report says so.
* ``accept_length_model``: ``"chain_analytic"`` when a k-token draft is a prefix of the
  (k+1)-token draft (the acceptance profile then extrapolates over k), else
  ``"measured_per_k"`` (the default; trees, adaptive and block drafts).
* ``in_all``: whether ``methods = "all"`` includes it (``False`` for methods that need
  training or special settings first, such as AutoJudge), and ``not_in_all_reason``: the
  one line ``run`` and ``validate`` print when "all" skips it.
* ``generate(request)``: decode one prompt and return the new tokens, why it stopped and
  its :class:`DecodeStats`.
* optional ``generate_batch(requests)`` with a ``batch_size`` field in ``Params``: several
  prompts per call (batched decoding); records then carry per-sequence latency and batch
  throughput.
* optional ``prepare(context)``: called once per run before the warm-up, with a
  :class:`RunContext` (the preset, prompts, sampling); load or check what the method needs.
* optional ``end_warmup()``: methods that keep state across requests reset what the
  warm-up taught them (the warm-up decodes prompt 0, which is then timed).
* optional ``train(context)``: train what the method needs (``specbench judge train`` calls
  it for every method of a preset); return a one-line summary.
* optional classmethod ``replay_proposer(params)``: for draft-free methods, the drafter
  ``generate`` uses; ``specbench replay`` then replays saved greedy outputs through it.
* optional ``reference_method()``: for methods whose tokens do not come from the in-process
  target (an external engine), the same engine's plain decoding; ``specbench audit`` then
  compares samples with it (two-sample test) instead of with the target's exact
  distribution.

The runner builds one instance per preset method after the models load, so an instance may
keep state across prompts (compiled graphs, a trained judge). Most methods need no loop of
their own: compose a drafter (``specbench.decoding.drafters``) and a verifier
(``specbench.decoding.verify``) and call
:func:`specbench.decoding.loop.speculative_generate`.

Registering it
==============
In the plugin package's ``pyproject.toml``::

    [project.entry-points."specbench.methods"]
    my-method = "my_package.module:MyMethod"

specbench's own methods register through the same group. ``specbench methods`` lists what
is installed; a plugin that fails to import is listed with its error and the rest still load.
``plugins/specbench-adaptive-k`` is a complete example to copy.
"""

from __future__ import annotations

import functools
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import Enum
from importlib.metadata import EntryPoint, entry_points
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from pydantic import BaseModel, ConfigDict

from specbench.decoding.types import DecodeStats, GenerationRequest, GenerationResult
from specbench.errors import PluginError
from specbench.models.base import LanguageModel

if TYPE_CHECKING:
    from specbench.decoding.sampling import SamplingParams
    from specbench.models.specs import ModelsSpec

ENTRY_POINT_GROUP = "specbench.methods"

__all__ = [
    "ENTRY_POINT_GROUP",
    "BrokenPlugin",
    "DecodeStats",
    "DecodingMethod",
    "GenerationRequest",
    "GenerationResult",
    "MethodInfo",
    "MethodModels",
    "MethodParams",
    "MethodRegistry",
    "ModelRole",
    "RunContext",
    "discover_methods",
]


class ModelRole(str, Enum):
    """A model a method can ask for."""

    TARGET = "target"
    DRAFT = "draft"


class MethodParams(BaseModel):
    """Base for a method's parameters: unknown keys are errors, values are immutable."""

    model_config = ConfigDict(extra="forbid", frozen=True)


@dataclass
class MethodModels:
    """The loaded models a method works with."""

    target: LanguageModel
    draft: LanguageModel | None = None

    def require_draft(self) -> LanguageModel:
        if self.draft is None:
            raise PluginError(
                "this method needs a draft model and none was loaded",
                "add a [models.draft] table to the preset",
            )
        return self.draft


@dataclass
class RunContext:
    """What a method may need to know about the run it is part of (see ``prepare``).

    ``prompts`` is the preset's prompt-set spec and ``prompt_ids`` the ids of the prompts
    this run decodes; ``train_missing`` says the user asked to train what is missing on the
    spot (``--train-judge``) and ``force_train`` to train again even if it exists.
    """

    label: str
    preset_name: str
    preset_source: str
    models_spec: ModelsSpec
    prompts: Any
    prompt_ids: list[str]
    base_dir: Path
    sampling: SamplingParams
    train_missing: bool = False
    force_train: bool = False
    on_progress: Callable[[str], None] = field(default=lambda message: None)


class DecodingMethod(ABC):
    """A decoding method; see the module docstring for the plugin guide."""

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    needs: ClassVar[frozenset[ModelRole]] = frozenset({ModelRole.TARGET})
    Params: ClassVar[type[MethodParams]] = MethodParams
    exact: ClassVar[bool] = True
    in_all: ClassVar[bool] = True
    #: Why ``in_all`` is ``False`` and what to do instead (shown when "all" skips it).
    not_in_all_reason: ClassVar[str] = ""
    accept_length_model: ClassVar[str] = "measured_per_k"

    def __init__(self, params: MethodParams, models: MethodModels) -> None:
        self.params = params
        self.models = models
        #: Set by methods whose acceptance is simulated (timing only): records are marked.
        self.synthetic = False

    @abstractmethod
    def generate(self, request: GenerationRequest) -> GenerationResult:
        """Decode ``request`` and return the new tokens with their statistics."""

    @property
    def batch_size(self) -> int:
        """How many prompts the runner hands to :meth:`generate_batch` at once."""
        return int(getattr(self.params, "batch_size", 1))

    def generate_batch(self, requests: list[GenerationRequest]) -> list[GenerationResult]:
        """Decode several requests together (when ``Params`` has ``batch_size``); the default
        decodes them one after another. Results may carry ``latency_s`` per sequence."""
        return [self.generate(request) for request in requests]

    def prepare(self, context: RunContext) -> None:  # noqa: B027 - optional hook
        """Called once before the warm-up; raise a ``SpecbenchError`` to stop the run."""

    def end_warmup(self) -> None:  # noqa: B027 - optional hook
        """Called after this method's warm-up generations: forget what they taught state kept
        across requests (a global cache, a learned matrix), so a timed prompt never meets
        its own warm-up output."""

    def train(self, context: RunContext) -> str | None:
        """Train what the method needs; ``None`` when it needs nothing."""
        return None

    @classmethod
    def replay_proposer(cls, params: MethodParams) -> Any:
        """A fresh drafter (a ``Drafter`` or a ``TreeProposer``) built as ``generate`` builds
        it, for ``specbench replay``; ``None`` (the default) when the drafts depend on model
        outputs and cannot be replayed from saved tokens."""
        return None

    def reference_method(self) -> DecodingMethod | None:
        """What ``specbench audit`` compares this method's samples with.

        ``None`` (the default): the in-process target's exact distribution, computed by
        teacher-forcing it. A method whose tokens come from elsewhere (an external engine)
        returns the same engine's plain decoding, and the audit uses a two-sample test.
        """
        return None


@dataclass(frozen=True)
class MethodInfo:
    """An installed method and the distribution that provides it."""

    name: str
    cls: type[DecodingMethod]
    package: str
    version: str
    entry_point: str

    @property
    def needs(self) -> frozenset[ModelRole]:
        return self.cls.needs

    @property
    def needs_text(self) -> str:
        """``"target"`` or ``"target+draft"``."""
        return "+".join(role.value for role in ModelRole if role in self.cls.needs)


@dataclass(frozen=True)
class BrokenPlugin:
    """An entry point that could not be loaded, with the reason."""

    name: str
    package: str
    version: str
    entry_point: str
    error: str


@dataclass
class MethodRegistry:
    """Every method found in the ``specbench.methods`` entry-point group."""

    methods: dict[str, MethodInfo] = field(default_factory=dict)
    broken: list[BrokenPlugin] = field(default_factory=list)

    def get(self, name: str) -> MethodInfo:
        """The method called ``name``, or a :class:`PluginError` that says what exists."""
        if name in self.methods:
            return self.methods[name]
        for plugin in self.broken:
            if plugin.name == name:
                raise PluginError(
                    f"method '{name}' from {plugin.package} {plugin.version} failed to load: "
                    f"{plugin.error}",
                    f"reinstall or fix {plugin.package}; `specbench methods` shows the error",
                )
        installed = ", ".join(sorted(self.methods)) or "none"
        raise PluginError(
            f"no method named '{name}' is installed (installed: {installed})",
            "check the spelling, or pip install the plugin that provides it",
        )


def discover_methods(*, refresh: bool = False) -> MethodRegistry:
    """Load every method registered under ``specbench.methods``.

    Results are cached; ``refresh=True`` reads the entry points again (after an install).
    """
    if refresh:
        _discover.cache_clear()
    return _discover()


@functools.cache
def _discover() -> MethodRegistry:
    registry = MethodRegistry()
    for entry in sorted(entry_points(group=ENTRY_POINT_GROUP), key=lambda e: e.name):
        package, version = _distribution_of(entry)
        try:
            cls = _load_method_class(entry)
            if entry.name in registry.methods:
                other = registry.methods[entry.name].package
                raise PluginError(f"the name '{entry.name}' is already provided by {other}")
        except Exception as error:  # a broken plugin must not take the others down
            registry.broken.append(
                BrokenPlugin(
                    name=entry.name,
                    package=package,
                    version=version,
                    entry_point=entry.value,
                    error=f"{type(error).__name__}: {error}",
                )
            )
            continue
        registry.methods[entry.name] = MethodInfo(
            name=entry.name, cls=cls, package=package, version=version, entry_point=entry.value
        )
    return registry


def _load_method_class(entry: EntryPoint) -> type[DecodingMethod]:
    loaded = entry.load()
    if not (isinstance(loaded, type) and issubclass(loaded, DecodingMethod)):
        raise TypeError(f"{entry.value} is not a DecodingMethod subclass")
    if loaded.name != entry.name:
        raise TypeError(
            f"{entry.value} calls itself '{loaded.name}' but is registered as '{entry.name}'"
        )
    if not issubclass(loaded.Params, MethodParams):
        raise TypeError(f"{entry.value}.Params does not subclass specbench MethodParams")
    return loaded


def _distribution_of(entry: EntryPoint) -> tuple[str, str]:
    dist = entry.dist
    if dist is None:
        return "unknown", "unknown"
    return dist.metadata["Name"] or dist.name, dist.version
