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
* ``ledger_phases``: the cost-ledger phases its generation marks (``draft``, ``target``,
  ``verify``; the shared loops mark all three, so most methods leave it). A phase left out
  is recorded as unknown and its time stays in ``host``.
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
* optional ``train(context)``: train what the method needs (``specbench train`` calls
  it for every method of a preset); return a one-line summary.
* optional classmethod ``replay_proposer(params)``: for draft-free methods, the proposer
  ``generate`` uses; ``specbench replay`` then replays saved greedy outputs through it.
* optional ``close()``: release what the method holds (processes, servers); called once
  when the run ends, also after an error or Ctrl-C.

Import everything from :mod:`specbench.api`. Declare the parameter class as the generic
argument, ``class MyMethod(DecodingMethod[MyParams])``, and ``self.params`` is typed as it.

External engines
================
A method whose generation runs in another process or library subclasses
:class:`EngineMethod` (``needs = frozenset()`` and ``ledger_phases = frozenset()`` by
default): the runner then loads no in-process weights for it, only the target's
tokenizer (prompts are handed over as token ids, the same ids every method gets), and
``self.models.specs`` holds the preset's model specs to build the engine from. It fills
:class:`DecodeStats` from what the engine reports (drafts proposed and accepted, per
position) and puts engine-specific numbers in ``stats.extra``. It returns the phase times
the engine reports in ``GenerationResult.costs`` (seconds by phase); the rest are unknown,
never zero. Its hooks:

* ``engine_info()``: ``{"name", "version", "options"}`` of the engine, in every record.
* optional ``own_baseline()``: the parameters of this same method without speculation (the
  engine's plain decoding). Its speedup, greedy identity (``= baseline``) and audit are then
  measured against that preset method instead of the run's baseline.
* optional ``reference_method()``: what ``specbench audit`` compares its samples with; by
  default the ``own_baseline()`` method (a two-sample test) or, without one, the target's
  exact distribution.

``plugins/specbench-llamacpp`` and ``plugins/specbench-vllm`` are complete examples.

The runner builds one instance per preset method after the models load, so an instance may
keep state across prompts (compiled graphs, a trained judge).

Methods on specbench's own engine
=================================
Most methods need no loop of their own. Subclass
:class:`specbench.methods.in_process.InProcessMethod`, give ``Params`` the execution fields
(subclass ``ExecutionParams``: ``engine``, ``batch_size``, ...), and set ``self.proposer``
(how it drafts) and, when it is not the exact rejection verifier, ``self.verifier``. The
execution core (:func:`specbench.decoding.core.decode`) then runs it eagerly, with static
caches and CUDA graphs, or batched, as the preset's fields say, with the cost ledger and
the greedy path; ``generate`` and ``generate_batch`` come with it.

Proposers
=========
A new way of drafting is a :class:`specbench.decoding.proposers.Proposer`, not a new loop,
and it is batch-first: ``start(requests, sessions)`` runs before each batch (drop
per-sequence state there, and take caches for any model it runs from ``sessions``, so
they follow the chosen engine); ``propose(slots)`` gets one ``Slot`` per unfinished row
(``row``, the committed ``sequence``, the ``budget`` of tokens that could still be kept)
and returns one draft per slot; :class:`~specbench.decoding.proposers.RowProposer` loops
over rows for proposers that treat them independently (implement ``propose_row``). A
draft is a chain, a ``Proposal``:

* ``tokens``: at most ``budget`` draft tokens. An empty list is allowed and means "nothing
  to propose": that step the target decodes one token by itself, recorded as a step with
  0 proposed (not a rejection), so a lookup that finds no match costs one plain step.
* ``probs``: the ``[len(tokens), vocab]`` distributions the tokens were *drawn* from. It is
  required whenever the proposer samples at random: the verifier's acceptance test divides
  by it, and exactness depends on it. A deterministic proposer (n-gram lookup, argmax, a
  fixed table) leaves it ``None`` and the verifier uses one-hot rows, which is exact too: a
  deterministic proposal's distribution is a point mass. Never pass argmax tokens with the
  model's full distribution, or the other way round: the audit fails such a method.
* ``hidden`` / ``last_hidden``: only for judges and heads that read draft states.

or a ``specbench.decoding.tree.TokenTree`` (set ``drafts_trees = True``; the base
``TreeProposer`` asks for ``grow(row, sequence, max_depth)``), which the target walks with
its own samples. ``observe(outcomes)`` tells it how each row's draft fared: the kept
``path``, the next ``token``, the target's logits of the call, and with
``wants_target_hidden`` its last hidden states (trained heads). ``stats(row)`` adds
method-specific numbers to the record; ``calls[row]`` counts draft forwards.

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
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Generic

from pydantic import BaseModel, ConfigDict
from typing_extensions import TypeVar

from specbench.decoding.types import DecodeStats, GenerationRequest, GenerationResult
from specbench.entry_points import BrokenEntry, load_entry_points
from specbench.errors import PluginError
from specbench.install_hints import install_path
from specbench.models.roles import MethodModels as MethodModels
from specbench.models.roles import ModelRole as ModelRole

if TYPE_CHECKING:
    from specbench.decoding.sampling import SamplingParams
    from specbench.models.specs import ModelsSpec

ENTRY_POINT_GROUP = "specbench.methods"

#: Methods of the plugin packages in this repository, for the "not installed" hint.
KNOWN_PLUGINS = {
    "vllm": "plugins/specbench-vllm (vLLM itself needs its own environment: see its README)",
    "llama-cpp": "plugins/specbench-llamacpp, then build llama-server: specbench-llamacpp-build",
    "adaptive-speculative": "plugins/specbench-adaptive-k",
}

__all__ = [
    "COMMAND_GROUP",
    "ENTRY_POINT_GROUP",
    "CommandPlugin",
    "DecodeStats",
    "DecodingMethod",
    "EngineMethod",
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


class MethodParams(BaseModel):
    """Base for a method's parameters: unknown keys are errors, values are immutable."""

    model_config = ConfigDict(extra="forbid", frozen=True)


#: A method's parameter class (``DecodingMethod[P]``).
P = TypeVar("P", bound=MethodParams, default=MethodParams)


@dataclass
class RunContext:
    """What a method may need to know about the run it is part of (see ``prepare``).

    ``prompts`` is the preset's prompt-set spec and ``prompt_ids`` the ids of the prompts
    this run decodes; ``train_missing`` says the user asked to train what is missing on the
    spot (``run --train``) and ``force_train`` to train again even if it exists.
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
    #: The results file of the run (``None`` outside ``run``): engines keep logs beside it.
    output: Path | None = None

    def log_path(self, kind: str) -> Path:
        """Where a method keeps a log of ``kind`` (``llama-server``, say): beside the
        results file, named after it and the method's label."""
        if self.output is not None:
            stem = self.output.name.removesuffix(".jsonl")
            return self.output.with_name(f"{stem}.{self.label}.{kind}.log")
        from specbench.cache_dirs import cache_root

        return cache_root() / "logs" / f"{self.preset_name}.{self.label}.{kind}.log"


class DecodingMethod(ABC, Generic[P]):
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
    #: The cost-ledger phases this method's generation marks (the shared loops mark all
    #: three); a phase left out is recorded as unknown, never as zero, and ``host`` then
    #: includes its time. External engines report what they measured in
    #: ``GenerationResult.costs`` instead.
    ledger_phases: ClassVar[frozenset[str]] = frozenset({"draft", "target", "verify"})

    def __init__(self, params: P, models: MethodModels) -> None:
        #: The validated parameters, typed as the subclass's ``P``: ``class
        #: MyMethod(DecodingMethod[MyParams])`` reads ``self.params.k`` with no cast.
        self.params: P = params
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

    def prepare(self, context: RunContext) -> None:
        """Called once before the warm-up; raise a ``SpecbenchError`` to stop the run."""

    def end_warmup(self) -> None:
        """Called after this method's warm-up generations: forget what they taught state kept
        across requests (a global cache, a learned matrix), so a timed prompt never meets
        its own warm-up output."""

    def train(self, context: RunContext) -> str | None:
        """Train what the method needs; ``None`` when it needs nothing."""
        return None

    @classmethod
    def replay_proposer(cls, params: MethodParams) -> Any:
        """A fresh :class:`~specbench.decoding.proposers.Proposer` built as ``generate`` builds
        it, for ``specbench replay``; ``None`` (the default) when the drafts depend on model
        outputs and cannot be replayed from saved tokens."""
        return None

    def close(self) -> None:
        """Release what the method holds (engine processes, servers); called once when the
        run ends, also after an error or Ctrl-C."""


class EngineMethod(DecodingMethod[P]):
    """A method whose generation runs in another engine or library (vLLM, llama.cpp,
    transformers' own ``generate``): it describes that engine in every record, may name a
    plain-decoding twin of itself to be measured against, and reports the phase times the
    engine measured (``GenerationResult.costs``) instead of the ledger's."""

    needs: ClassVar[frozenset[ModelRole]] = frozenset()
    ledger_phases: ClassVar[frozenset[str]] = frozenset()

    def own_baseline(self) -> P | None:
        """The parameters of this same method that decode without speculation, when its
        speedup and greedy identity should be measured against those rather than against
        the run's baseline (an engine's plain decoding: ``vllm`` without ``speculative``).

        ``None`` (the default): the run's baseline is this method's reference. The runner
        finds the preset method with this class and these parameters, times it first on
        every prompt, and records ``reference`` on every sample.
        """
        return None

    def reference_method(self) -> DecodingMethod[P] | None:
        """What ``specbench audit`` compares this method's samples with.

        ``None``: the in-process target's exact distribution, computed by teacher-forcing
        it. A method with an :meth:`own_baseline` (an external engine) returns that plain
        decoding by default, and the audit uses a two-sample test.
        """
        params = self.own_baseline()
        if params is None:
            return None
        return type(self)(params, self.models)

    @abstractmethod
    def engine_info(self) -> dict[str, Any]:
        """``{"name", "version", "options"}`` of the engine, written into every record."""


def own_baseline(method: DecodingMethod) -> MethodParams | None:
    """``method``'s plain-decoding twin's parameters (engines only), else ``None``."""
    return method.own_baseline() if isinstance(method, EngineMethod) else None


def engine_info(method: DecodingMethod) -> dict[str, Any] | None:
    """What ``method``'s records say about its engine; ``None`` for specbench's own."""
    return method.engine_info() if isinstance(method, EngineMethod) else None


def reference_method(method: DecodingMethod) -> DecodingMethod | None:
    """What the audit compares ``method``'s samples with; ``None``: the target's exact
    distribution (every in-process method)."""
    return method.reference_method() if isinstance(method, EngineMethod) else None


#: Entry-point group of CLI command plugins.
COMMAND_GROUP = "specbench.commands"


class CommandPlugin(ABC):
    """Adds commands to the ``specbench`` CLI (entry-point group ``specbench.commands``, the
    way simonw/llm's ``register_commands`` hook does): ``register(app)`` receives the root
    Typer app and adds commands or groups to it. Keep the command thin: parse, call the
    library, render."""

    name: ClassVar[str] = ""

    @abstractmethod
    def register(self, app: Any) -> None:
        """Add this plugin's commands to ``app`` (a ``typer.Typer``)."""


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
        """``"target"``, ``"target+draft"``, or ``"none (engine)"`` for external engines."""
        needed = "+".join(role.value for role in ModelRole if role in self.cls.needs)
        return needed or "none (engine)"


@dataclass
class MethodRegistry:
    """Every method found in the ``specbench.methods`` entry-point group."""

    methods: dict[str, MethodInfo] = field(default_factory=dict)
    broken: list[BrokenEntry] = field(default_factory=list)

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
        hint = "check the spelling, or pip install the plugin that provides it"
        if name in KNOWN_PLUGINS:
            folder, _, after = KNOWN_PLUGINS[name].partition(" ")
            hint = f"{install_path(folder)} {after}".strip()
        raise PluginError(f"no method named '{name}' is installed (installed: {installed})", hint)


def discover_methods(*, refresh: bool = False) -> MethodRegistry:
    """Load every method registered under ``specbench.methods``.

    Results are cached; ``refresh=True`` reads the entry points again (after an install).
    """
    if refresh:
        _discover.cache_clear()
    return _discover()


@functools.cache
def _discover() -> MethodRegistry:
    group = load_entry_points(ENTRY_POINT_GROUP, DecodingMethod, check=_check_params)
    methods = {
        name: MethodInfo(name, entry.cls, entry.package, entry.version, entry.value)
        for name, entry in group.loaded.items()
    }
    return MethodRegistry(methods=methods, broken=list(group.broken.values()))


def _check_params(cls: type[DecodingMethod]) -> None:
    if not issubclass(cls.Params, MethodParams):
        raise TypeError(f"{cls.__module__}.{cls.__name__}.Params does not subclass MethodParams")
