"""Train what a preset's methods need before they run (``specbench train``)."""

from __future__ import annotations

from collections.abc import Callable

from specbench.presets.schema import ResolvedPreset
from specbench.run.plan import SessionPlan


def train_methods(
    resolved: ResolvedPreset,
    force: bool = False,
    on_message: Callable[[str], None] | None = None,
) -> list[str]:
    """Load the preset's models once and call ``train`` on every method, in the session
    plan's order; returns the one-line summaries of what was trained or found."""
    say = on_message or (lambda message: None)
    prompts = resolved.preset.prompts.load(resolved.base_dir)
    summaries = []
    with SessionPlan.open(resolved, prompts, say, force_train=force) as plan:
        for label in plan.order:
            summary = plan.methods[label].train(plan.context(label))
            if summary:
                summaries.append(summary)
    return summaries
