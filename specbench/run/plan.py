"""One session plan for every command that runs a preset's methods: ``run`` (local and each
Ray shard), ``audit`` and training.

The plan loads the models once, builds one instance per preset method, finds each method's
reference (the run's baseline, or an engine's own plain decoding), orders the methods (the
baseline first, then the references, then the rest), prepares each exactly once, and closes
each exactly once: after its turn when ``runs.order`` decodes it apart (so only one external
engine holds memory at a time), and on every exit (an error, Ctrl-C) for the rest. What a
command then does with the methods (time them, audit them, train them) is its own.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

from specbench.decoding.sampling import SamplingParams
from specbench.errors import SpecbenchError
from specbench.models.loading import load_models
from specbench.plugins import (
    DecodingMethod,
    MethodModels,
    MethodParams,
    ModelRole,
    RunContext,
    own_baseline,
)
from specbench.presets.schema import ResolvedPreset
from specbench.prompts.prompt import Prompt


@dataclass
class SessionPlan:
    """The models and methods of one session, and their lifecycle (see the module doc)."""

    resolved: ResolvedPreset
    prompts: list[Prompt]
    models: MethodModels
    methods: dict[str, DecodingMethod]
    #: Each label's reference label (``None``: an engine without its plain-decoding row).
    references: dict[str, str | None]
    #: Every label, the baseline first, then the references, then the rest.
    order: list[str]
    #: Labels decoded one at a time after the others (``runs.order``): each is prepared just
    #: before its turn and closed after it.
    apart: frozenset[str]
    on_message: Callable[[str], None] = lambda message: None
    train_missing: bool = False
    force_train: bool = False
    output: Path | None = None
    prepared: set[str] = field(default_factory=set)
    closed: set[str] = field(default_factory=set)

    @classmethod
    def open(
        cls,
        resolved: ResolvedPreset,
        prompts: list[Prompt],
        on_message: Callable[[str], None] = lambda message: None,
        *,
        roles: Collection[ModelRole] | None = None,
        train_missing: bool = False,
        force_train: bool = False,
        output: Path | None = None,
    ) -> SessionPlan:
        """Load the models (those ``roles`` need; default: what the methods need) and build
        the methods. Nothing is prepared yet."""
        preset = resolved.preset
        on_message("loading models")
        if roles is None:
            roles = frozenset(role for m in resolved.methods for role in m.info.cls.needs)
        models = load_models(preset.models, on_message, frozenset(roles))
        methods = instantiate_methods(resolved, models)
        baseline = preset.runs.baseline
        try:
            references = method_references(methods, baseline, on_message)
        except BaseException:
            close_methods(methods)
            raise
        rank = {label: 0 if label == baseline else 1 for label in references.values()}
        order = sorted((m.label for m in resolved.methods), key=lambda x: rank.get(x, 2))
        return cls(
            resolved,
            prompts,
            models,
            methods,
            references,
            order,
            methods_apart(preset.runs.order, methods),
            on_message,
            train_missing,
            force_train,
            output,
        )

    def context(self, label: str) -> RunContext:
        """What ``label``'s ``prepare`` and ``train`` hooks see of the run."""
        return run_context(
            self.resolved,
            label,
            self.prompts,
            self.train_missing,
            self.force_train,
            self.on_message,
            self.output,
        )

    def prepare(self, label: str) -> None:
        """Prepare ``label`` once (a second call does nothing); its errors propagate."""
        if label in self.prepared:
            return
        self.prepared.add(label)
        self.methods[label].prepare(self.context(label))

    def prepare_together(self) -> None:
        """Prepare every method not decoded apart, in order; on a failure close them all."""
        try:
            for label in self.order:
                if label not in self.apart:
                    self.prepare(label)
        except BaseException:
            self.close()
            raise

    def adopt(self, label: str, method: DecodingMethod) -> None:
        """Add a method the command made itself (the audit's reference engine): prepared now
        and closed with the others."""
        self.methods[label] = method
        self.prepare(label)

    def finish(self, label: str) -> None:
        """Close ``label`` after its turn (methods decoded apart)."""
        if label not in self.closed:
            self.closed.add(label)
            self.methods[label].close()

    def close(self) -> None:
        """Close every method not closed yet; one failing does not keep the others open."""
        close_methods({k: m for k, m in self.methods.items() if k not in self.closed})
        self.closed.update(self.methods)

    def __enter__(self) -> SessionPlan:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        self.close()


def run_context(
    resolved: ResolvedPreset,
    label: str,
    prompts: list[Prompt],
    train_missing: bool = False,
    force_train: bool = False,
    on_message: Callable[[str], None] | None = None,
    output: Path | None = None,
) -> RunContext:
    """What a method's ``prepare`` and ``train`` hooks get to see of the run."""
    sampling = resolved.preset.sampling
    return RunContext(
        label=label,
        preset_name=resolved.name,
        preset_source=resolved.source,
        models_spec=resolved.preset.models,
        prompts=resolved.preset.prompts,
        prompt_ids=[p.id for p in prompts],
        base_dir=resolved.base_dir,
        sampling=SamplingParams(sampling.temperature, sampling.top_k, sampling.top_p),
        train_missing=train_missing,
        force_train=force_train,
        on_progress=on_message or (lambda message: None),
        output=output,
    )


def instantiate_methods(
    resolved: ResolvedPreset, models: MethodModels
) -> dict[str, DecodingMethod]:
    """One instance per preset method, keyed by label."""
    return {m.label: _instantiate(m.label, m.info.cls, m.params, models) for m in resolved.methods}


def _instantiate(
    label: str, cls: type[DecodingMethod], params: MethodParams, models: MethodModels
) -> DecodingMethod:
    try:
        return cls(params, models)
    except SpecbenchError:
        raise
    except Exception as error:
        raise SpecbenchError(
            f"method '{label}' failed to start: {type(error).__name__}: {error}",
            "check its parameters; `specbench methods` shows where it comes from",
        ) from error


def methods_apart(order: str, methods: dict[str, DecodingMethod]) -> frozenset[str]:
    """The labels ``runs.order`` decodes one at a time, after the others: every method for
    ``method``, the external engines (no in-process model) for ``engines-last``."""
    if order == "method":
        return frozenset(methods)
    if order == "engines-last":
        return frozenset(label for label, method in methods.items() if not method.needs)
    return frozenset()


def method_references(
    methods: dict[str, DecodingMethod],
    baseline: str | None,
    on_message: Callable[[str], None] = lambda message: None,
) -> dict[str, str | None]:
    """Each method's reference label: the preset method with its ``own_baseline()``
    parameters (an engine's plain decoding), else the run's baseline."""
    references: dict[str, str | None] = {}
    for label, method in methods.items():
        wanted = own_baseline(method)
        if wanted is None:
            references[label] = baseline
            continue
        found = [
            other
            for other, candidate in methods.items()
            if type(candidate) is type(method) and candidate.params == wanted
        ]
        references[label] = found[0] if found else None
        if not found:
            on_message(
                f"note: {label} has no plain-decoding row of its own in the preset (add "
                f"method '{method.name}' with params {wanted.model_dump(exclude_defaults=True)})"
                "; its within-engine speedup and '= baseline' are not measured"
            )
    return references


def close_methods(methods: dict[str, DecodingMethod]) -> None:
    """Call every method's ``close`` hook; one failing does not keep the others open."""
    for method in methods.values():
        with contextlib.suppress(Exception):  # best effort at the end of a run
            method.close()
