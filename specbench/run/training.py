"""Train what a preset's methods need before they run (``specbench judge train``)."""

from __future__ import annotations

from collections.abc import Callable

from specbench.models.loading import load_models
from specbench.presets.schema import ResolvedPreset
from specbench.run.runner import instantiate_methods, run_context


def train_methods(
    resolved: ResolvedPreset,
    force: bool = False,
    on_message: Callable[[str], None] | None = None,
) -> list[str]:
    """Load the preset's models once and call ``train`` on every method; returns summaries."""
    say = on_message or (lambda message: None)
    say("loading models")
    models = load_models(resolved.preset.models, say)
    prompts = resolved.preset.prompts.load(resolved.base_dir)
    summaries = []
    for label, method in instantiate_methods(resolved, models).items():
        context = run_context(resolved, label, prompts, force_train=force, on_message=say)
        summary = method.train(context)
        if summary:
            summaries.append(summary)
    return summaries
