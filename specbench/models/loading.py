"""Build loaded models from their specs, and check that a target/draft pair fits together."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from specbench.errors import ModelLoadError
from specbench.models.base import LanguageModel, Tokenizer
from specbench.models.compat import compare_tokenizers
from specbench.models.specs import (
    DummyModelSpec,
    HFModelSpec,
    ModelSpec,
    ModelsSpec,
    ToyModelSpec,
    missing_requirements,
)
from specbench.models.toy import ToyConfig, ToyLanguageModel, ToyTokenizer
from specbench.plugins import MethodModels

ProgressFn = Callable[[str], None]


def load_model(spec: ModelSpec, role: str) -> LanguageModel:
    """Load one model described by ``spec``; ``role`` names it in errors and records."""
    if isinstance(spec, ToyModelSpec):
        config = ToyConfig(**spec.model_dump(exclude={"backend"}))
        return ToyLanguageModel(config, name=f"toy-{role}")
    if isinstance(spec, HFModelSpec):
        from specbench.models.catalog import resolve_model_source
        from specbench.models.hf import load_hf_model

        return load_hf_model(spec, resolve_model_source(spec.model), name=spec.model)
    if isinstance(spec, DummyModelSpec):
        from specbench.models.dummy import load_dummy_model

        return load_dummy_model(spec)
    raise ModelLoadError(f"no loader for backend {spec.backend!r}")


def load_tokenizer(spec: ModelSpec, local_only: bool = True) -> Tokenizer:
    """Only the tokenizer of a spec (for ``validate``); hub ids must already be cached."""
    if isinstance(spec, ToyModelSpec):
        return ToyTokenizer(spec.vocab_size)
    if isinstance(spec, DummyModelSpec):
        from specbench.models.dummy import dummy_tokenizer

        return dummy_tokenizer(spec)
    from specbench.models.catalog import resolve_model_source
    from specbench.models.hf import load_hf_tokenizer

    return load_hf_tokenizer(spec, resolve_model_source(spec.model), local_only=local_only)


def check_pair(target: Tokenizer, draft: Tokenizer) -> None:
    """Raise :class:`ModelLoadError` when the draft's token ids differ from the target's."""
    mismatch = compare_tokenizers(target, draft)
    if mismatch is not None:
        raise ModelLoadError(
            f"the draft's tokenizer does not match the target's: {mismatch.describe()}",
            "use a draft from the target's model family (one that shares its tokenizer)",
        )


def load_models(spec: ModelsSpec, on_progress: ProgressFn | None = None) -> MethodModels:
    """Load the target and, if the preset has one, the draft, and fit them together."""
    if on_progress:
        on_progress("loading target model")
    target = load_model(spec.target, "target")
    if spec.draft is None:
        return MethodModels(target=target)
    if on_progress:
        on_progress("loading draft model")
    draft = load_model(spec.draft, "draft")
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
    return MethodModels(target=target, draft=draft)


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
    notes: list[str] = []
    for role, model_spec in roles:
        missing = missing_requirements(model_spec)
        if missing:
            modules = ", ".join(m for m, _ in missing)
            extras = ",".join(sorted({extra for _, extra in missing}))
            issues.append(
                (
                    f"models.{role}.backend",
                    f"the {model_spec.backend} backend here needs {modules}, not installed",
                    f"pip install 'specbench[{extras}]'",
                )
            )
            continue
        unavailable = _unavailable_reason(model_spec)
        if unavailable is not None:
            notes.append(f"models.{role}: {unavailable}; its tokenizer was not checked")
            continue
        try:
            if isinstance(model_spec, HFModelSpec):
                from specbench.models.catalog import resolve_model_source

                resolve_model_source(model_spec.model)
            if spec.draft is not None:
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
    if not isinstance(spec, HFModelSpec):
        return None
    from specbench.models.catalog import CATALOG

    if spec.model in CATALOG:
        if CATALOG[spec.model].fetched:
            return None
        return f"catalogue model {spec.model} is not fetched (specbench models fetch {spec.model})"
    if Path(spec.model).expanduser().exists():
        return None
    if "/" in spec.model and not spec.model.startswith((".", "/", "~")):
        if _in_hub_cache(spec):
            return None
        return f"{spec.model} is a hub id that is not downloaded"
    return None  # load_tokenizer reports it as an error


def _in_hub_cache(spec: HFModelSpec) -> bool:
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:
        return False
    found = try_to_load_from_cache(spec.model, "config.json", revision=spec.revision)
    return isinstance(found, str)
