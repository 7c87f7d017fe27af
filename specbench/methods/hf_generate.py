"""Hugging Face ``generate`` and assisted generation: transformers' own loops, as a reference row.

Runs ``model.generate`` on the preset's in-process target (and, with ``assisted``, the
draft as ``assistant_model``), so a table shows how specbench's loops compare with the
implementation most users start from, on the same weights and prompts. Forward hooks
count the target's and the draft's calls, which gives tokens per target call and the
drafts accepted (tokens - calls) without changing what transformers does.
"""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext
from typing import Any, Literal

import torch
from pydantic import Field

from specbench.decoding.types import DecodeStats, StopReason
from specbench.models import ledger
from specbench.models.base import LanguageModel
from specbench.models.capabilities import transformers_model
from specbench.plugins import (
    EngineMethod,
    GenerationRequest,
    GenerationResult,
    MethodParams,
    ModelRole,
)


class HFGenerateParams(MethodParams):
    assisted: bool = Field(False, description="Assisted generation with the preset's draft.")
    num_assistant_tokens: int = Field(4, ge=1, le=64, description="Draft tokens per step.")
    kernels: Literal["specbench", "transformers"] = Field(
        "specbench",
        description="specbench: the same model objects as specbench's rows (its packed and "
        "row-stable layers: loop against loop); transformers: transformers' own layers and "
        "default attention, as its users run it (engine against engine).",
    )


class HFGenerateMethod(EngineMethod[HFGenerateParams]):
    """transformers' ``generate`` (plain or assisted) on the in-process models."""

    name = "hf-generate"
    description = "transformers' own generate / assisted generation (a reference implementation)."
    needs = frozenset({ModelRole.TARGET})  # the draft too when assisted (require_draft)
    #: Hooks time the models' forwards; transformers' verification is not visible apart.
    ledger_phases = frozenset({"draft", "target"})
    Params = HFGenerateParams
    in_all = False
    not_in_all_reason = "a reference implementation (transformers' generate): name it to compare"

    def own_baseline(self) -> HFGenerateParams | None:
        params = self.params
        # Plain generate on the same kernels: the assisted settings do not apply.
        return HFGenerateParams(kernels=params.kernels)

    def engine_info(self) -> dict[str, Any]:
        import transformers

        return {
            "name": "transformers",
            "version": transformers.__version__,
            "options": self.params.model_dump(),
        }

    def generate(self, request: GenerationRequest) -> GenerationResult:
        params = self.params
        # transformers' own API (generate, generation_config) is what this method times.
        target: Any = transformers_model(self.models.target, self.name).transformers_module()
        kwargs: dict[str, Any] = {}
        draft: Any = None
        if params.assisted:
            draft = transformers_model(self.models.require_draft(), self.name)
            draft = draft.transformers_module()
            config = draft.generation_config
            config.num_assistant_tokens = params.num_assistant_tokens
            config.num_assistant_tokens_schedule = "constant"
            config.assistant_confidence_threshold = 0.0
            kwargs["assistant_model"] = draft
        sampling = request.sampling
        if sampling.greedy:
            kwargs |= {"do_sample": False}
        else:
            kwargs |= {
                "do_sample": True,
                "temperature": sampling.temperature,
                "top_k": sampling.top_k or 0,
                "top_p": sampling.top_p if sampling.top_p is not None else 1.0,
            }
            torch.manual_seed(request.seed)  # generate draws from the global generator
        stops = sorted(request.stop_token_ids)
        device = next(target.parameters()).device
        ids = torch.tensor([request.prompt_ids], device=device)
        calls = {"target": 0, "draft": 0}
        hooks = _timing_hooks(target, self.models.target, calls, "target")
        if draft is not None:
            hooks += _timing_hooks(draft, self.models.require_draft(), calls, "draft")
        shipped = params.kernels == "transformers"
        try:
            from specbench.models.hf.library import quiet_transformers

            with (
                torch.inference_mode(),
                quiet_transformers(),
                self.models.target.shipped_kernels() if shipped else nullcontext(),
                self.models.require_draft().shipped_kernels()
                if shipped and draft is not None
                else nullcontext(),
            ):
                out = target.generate(
                    ids,
                    attention_mask=torch.ones_like(ids),
                    max_new_tokens=request.max_new_tokens,
                    eos_token_id=stops or None,
                    pad_token_id=stops[0] if stops else 0,
                    **kwargs,
                )
        finally:
            for hook in hooks:
                hook.remove()
        tokens = [int(t) for t in out[0, len(request.prompt_ids) :]]
        stop: StopReason = "length"
        for index, token in enumerate(tokens):
            if token in request.stop_token_ids:
                tokens, stop = tokens[: index + 1], "eos"
                break
        stats = DecodeStats(steps=calls["target"], target_calls=calls["target"])
        if draft is not None:
            stats.draft_calls = calls["draft"]
            stats.accepted = max(0, len(tokens) - calls["target"])
            stats.proposed = calls["draft"]
        return GenerationResult(tokens=tokens, stop_reason=stop, stats=stats)


def _timing_hooks(module: Any, model: LanguageModel, calls: dict[str, int], role: str) -> list[Any]:
    """Forward hooks on ``module`` that count its calls and time each one in the open cost
    ledger as a forward of ``model`` (so transformers' loop gets the same target and draft
    phases as ours; its verification and bookkeeping stay in host)."""
    open_phases: list[AbstractContextManager[None]] = []

    def before(_module: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        ids = kwargs.get("input_ids", args[0] if args else None)
        rows = int(ids.shape[-1]) if ids is not None else 1
        phase = ledger.forward(model, rows)
        phase.__enter__()
        open_phases.append(phase)

    def after(*_: Any) -> None:
        calls[role] += 1
        if open_phases:
            open_phases.pop().__exit__(None, None, None)

    return [
        module.register_forward_pre_hook(before, with_kwargs=True),
        module.register_forward_hook(after),
    ]
