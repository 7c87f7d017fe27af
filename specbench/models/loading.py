"""Build loaded models from their specs, and check that a target/draft pair fits together."""

from __future__ import annotations

from collections.abc import Callable

from specbench.errors import ModelLoadError
from specbench.install_hints import install_extra
from specbench.models.backends import backend_of
from specbench.models.base import LanguageModel, Tokenizer
from specbench.models.compat import compare_tokenizers
from specbench.models.roles import MethodModels, ModelRole
from specbench.models.spec_base import missing_requirements
from specbench.models.specs import ModelSpec, ModelsSpec

ProgressFn = Callable[[str], None]


def load_model(spec: ModelSpec, role: str) -> LanguageModel:
    """Load one model described by ``spec``; ``role`` names it in errors and records."""
    return backend_of(spec).load(spec, role)


def load_tokenizer(spec: ModelSpec, local_only: bool = True) -> Tokenizer:
    """Only the tokenizer of a spec; with ``local_only`` hub ids must already be cached."""
    return backend_of(spec).load_tokenizer(spec, local_only=local_only)


def check_pair(target: Tokenizer, draft: Tokenizer) -> None:
    """Raise :class:`ModelLoadError` when the draft's token ids differ from the target's."""
    mismatch = compare_tokenizers(target, draft)
    if mismatch is not None:
        raise ModelLoadError(
            f"the draft's tokenizer does not match the target's: {mismatch.describe()}",
            "use a draft from the target's model family (one that shares its tokenizer)",
        )


def load_models(
    spec: ModelsSpec,
    on_progress: ProgressFn | None = None,
    roles: frozenset[ModelRole] = frozenset(ModelRole),
) -> MethodModels:
    """Load the target and, if the preset has one, the draft, and fit them together.

    ``roles`` are the in-process models the run's methods need; without the target (a run
    of external engines) only the target's tokenizer is loaded and no weights are.
    """
    if ModelRole.TARGET not in roles:
        if on_progress:
            on_progress("loading the target's tokenizer (no method needs in-process models)")
        tokenizer = load_tokenizer(spec.target, local_only=False)
        return MethodModels(tokenizer=tokenizer, specs=spec)
    if on_progress:
        on_progress("loading target model")
    target = load_model(spec.target, "target")
    _report_model_warnings(target, "target", on_progress)
    if spec.draft is None:  # a preset's draft loads with its target (methods may opt in)
        return MethodModels(target=target, specs=spec)
    if on_progress:
        on_progress("loading draft model")
    draft = load_model(spec.draft, "draft")
    _report_model_warnings(draft, "draft", on_progress)
    check_pair(target.tokenizer, draft.tokenizer)
    shared = min(target.vocab_size, draft.vocab_size)
    if shared < len(target.tokenizer.get_vocab()):
        raise ModelLoadError(
            f"the draft scores {draft.vocab_size} token ids and the target {target.vocab_size}, "
            f"fewer than the tokenizer's {len(target.tokenizer.get_vocab())}",
            "use models whose output layers cover the whole tokenizer",
        )
    # Padded embedding rows beyond the shared vocabulary are masked for both models.
    target.restrict_vocab(shared)
    draft.restrict_vocab(shared)
    return MethodModels(target=target, draft=draft, specs=spec)


def _report_model_warnings(model: LanguageModel, role: str, on_progress: ProgressFn | None) -> None:
    """Say so when the load-time check found ``batch_invariant`` not to hold on this CPU, and
    when the model runs another linear kernel than its spec's default would have."""
    kernel_note = model.describe().get("linear_kernel_note")
    if kernel_note and on_progress:
        on_progress(f"{role}: {kernel_note}; the oneDNN kernel runs instead")
    found = model.describe().get("batch_invariance")
    if found and not found.get("holds", True) and on_progress:
        from specbench.models.invariance import InvarianceCheck

        fields = {k: found[k] for k in ("rows", "context", "single", "chunks")}
        on_progress(InvarianceCheck(**fields).warning(role) or "")


def model_notes(spec: ModelsSpec) -> list[str]:
    """What each model's backend says a benchmark of it should know (nothing is loaded)."""
    roles = [("target", spec.target)] + ([("draft", spec.draft)] if spec.draft else [])
    return [
        f"models.{role}: {note}"
        for role, model_spec in roles
        for note in backend_of(model_spec).notes(model_spec, role)
    ]


def check_models(spec: ModelsSpec) -> tuple[list[tuple[str, str, str]], list[str]]:
    """Check what can be checked without loading weights or downloading anything.

    Each model must be findable (a local folder, a catalogue name or a hub id); for a
    target/draft pair, their tokenizers are loaded and compared. Returns ``(issues, notes)``:
    issues as ``(field, message, hint)``, notes for checks that could not run (a hub model
    not downloaded, a catalogue model not fetched yet).
    """
    roles: list[tuple[str, ModelSpec]] = [("target", spec.target)]
    if spec.draft is not None:
        roles.append(("draft", spec.draft))
    tokenizers: dict[str, Tokenizer] = {}
    issues: list[tuple[str, str, str]] = []
    notes: list[str] = model_notes(spec)
    for role, model_spec in roles:
        missing = missing_requirements(model_spec)
        if missing:
            modules = ", ".join(m for m, _ in missing)
            extras = ",".join(sorted({extra for _, extra in missing}))
            issues.append(
                (
                    f"models.{role}.backend",
                    f"the {model_spec.backend} backend here needs {modules}, not installed",
                    install_extra(extras),
                )
            )
            continue
        unavailable = _unavailable_reason(model_spec)
        if unavailable is not None:
            notes.append(f"models.{role}: {unavailable}; its tokenizer was not checked")
            continue
        try:
            tokenizers[role] = load_tokenizer(model_spec, local_only=True)
        except ModelLoadError as error:
            issues.append((f"models.{role}.model", error.message, error.hint or ""))
    if len(tokenizers) == 2:
        mismatch = compare_tokenizers(tokenizers["target"], tokenizers["draft"])
        if mismatch is not None:
            issues.append(
                (
                    "models.draft",
                    f"the draft's tokenizer does not match the target's: {mismatch.describe()}",
                    "use a draft from the target's model family (one that shares its tokenizer)",
                )
            )
    return issues, notes


def _unavailable_reason(spec: ModelSpec) -> str | None:
    """Why a model's files are not here yet (not an error), or ``None`` when they are."""
    return backend_of(spec).unavailable_reason(spec)
