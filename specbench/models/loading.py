"""Build loaded models from their specs."""

from __future__ import annotations

from collections.abc import Callable

from specbench.errors import ModelLoadError
from specbench.models.base import LanguageModel
from specbench.models.specs import ModelSpec, ModelsSpec, ToyModelSpec
from specbench.models.toy import ToyConfig, ToyLanguageModel
from specbench.plugins import MethodModels

ProgressFn = Callable[[str], None]


def load_model(spec: ModelSpec, role: str) -> LanguageModel:
    """Load one model described by ``spec``; ``role`` names it in errors and records."""
    if isinstance(spec, ToyModelSpec):
        config = ToyConfig(**spec.model_dump(exclude={"backend"}))
        return ToyLanguageModel(config, name=f"toy-{role}")
    raise ModelLoadError(f"no loader for backend {spec.backend!r}")


def load_models(spec: ModelsSpec, on_progress: ProgressFn | None = None) -> MethodModels:
    """Load the target and, if the preset has one, the draft."""
    if on_progress:
        on_progress("loading target model")
    target = load_model(spec.target, "target")
    draft = None
    if spec.draft is not None:
        if on_progress:
            on_progress("loading draft model")
        draft = load_model(spec.draft, "draft")
        if draft.vocab_size != target.vocab_size:
            raise ModelLoadError(
                f"draft returns {draft.vocab_size} logits but the target {target.vocab_size}",
                "pick a draft with the target's vocabulary",
            )
    return MethodModels(target=target, draft=draft)
