"""Deliberately broken decoding methods, installed in tests as a third-party plugin would be
(a distribution with ``specbench.methods`` entry points), for ``specbench audit`` to catch.

* ``accept-all``: keeps every draft token whatever the target says.
* ``resample-p``: after a rejection draws from p instead of norm(max(0, p - q)).
* ``ssd-wrong-branch``: SSD whose draft side, on a cache hit, hands over the tokens of the
  branch that was hit but the distributions of another branch (runs in the worker process).
* ``fake-engine``: stands for an external engine (its tokens do not come from the in-process
  loop, so the audit compares it with the same engine's plain decoding); ``broken = true``
  makes its speculation accept every draft.
"""

from __future__ import annotations

from typing import Any

import torch
from pydantic import Field

from specbench.decoding.core import decode
from specbench.decoding.drafters import ModelDrafter
from specbench.decoding.sampling import sample
from specbench.decoding.ssd import Branch, OutcomeKey, SpeculationDrafter
from specbench.decoding.verify import RejectionVerifier, Verdict
from specbench.methods.in_process import InProcessMethod
from specbench.methods.ssd import SsdMethod
from specbench.plugins import (
    DecodingMethod,
    EngineMethod,
    GenerationRequest,
    GenerationResult,
    MethodModels,
    MethodParams,
    ModelRole,
)


class AcceptEverything(RejectionVerifier):
    def verify(self, draft_tokens, draft_probs, target_probs, generator, features=None):
        batch, k = draft_tokens.shape
        accepted = torch.full((batch,), k, dtype=torch.long, device=target_probs.device)
        rows = torch.arange(batch, device=target_probs.device)
        return Verdict(accepted=accepted, next_tokens=sample(target_probs[rows, k], generator))


class ResampleFromTarget(RejectionVerifier):
    def verify(self, draft_tokens, draft_probs, target_probs, generator, features=None):
        verdict = super().verify(draft_tokens, draft_probs, target_probs, generator)
        rows = torch.arange(draft_tokens.shape[0])
        from_target = sample(target_probs[rows, verdict.accepted], generator)
        rejected = verdict.accepted < draft_tokens.shape[1]
        verdict.next_tokens = torch.where(rejected, from_target, verdict.next_tokens)
        return verdict


class BrokenParams(MethodParams):
    k: int = Field(4, ge=1)


class _Broken(InProcessMethod):
    needs = frozenset({ModelRole.TARGET, ModelRole.DRAFT})
    Params = BrokenParams
    in_all = False
    broken: type[RejectionVerifier] = RejectionVerifier

    def __init__(self, params: BrokenParams, models: MethodModels) -> None:
        super().__init__(params, models)
        self.proposer = ModelDrafter(models.require_draft(), k=params.k)
        self.verifier = self.broken()


class AcceptAllMethod(_Broken):
    name = "accept-all"
    description = "TEST ONLY: accepts every draft (broken on purpose)."
    broken = AcceptEverything


class ResampleFromPMethod(_Broken):
    name = "resample-p"
    description = "TEST ONLY: resamples from p after a rejection (broken on purpose)."
    broken = ResampleFromTarget


class WrongBranchDrafter(SpeculationDrafter):
    def _lookup(self, key: OutcomeKey | None) -> Branch | None:
        branch = super()._lookup(key)
        if branch is None:
            return None
        others = [b for k, b in self._cache.items() if k != key and b.probs is not None]
        return Branch(branch.tokens, others[0].probs if others else branch.probs)


class WrongBranchSsdMethod(SsdMethod):
    name = "ssd-wrong-branch"
    description = "TEST ONLY: SSD verifying against another branch's q (broken on purpose)."
    in_all = False
    drafter = WrongBranchDrafter


class FakeEngineParams(MethodParams):
    speculative: bool = False
    broken: bool = False
    k: int = Field(3, ge=1)


class FakeEngineMethod(EngineMethod[FakeEngineParams]):
    name = "fake-engine"
    description = "TEST ONLY: an 'external engine' audited against its own plain decoding."
    needs = frozenset({ModelRole.TARGET, ModelRole.DRAFT})
    Params = FakeEngineParams
    in_all = False

    def generate(self, request: GenerationRequest) -> GenerationResult:
        params = self.params
        if not params.speculative:
            return decode([request], self.models.target)[0]
        verifier = AcceptEverything() if params.broken else RejectionVerifier()
        drafter = ModelDrafter(self.models.require_draft(), k=params.k)
        return decode([request], self.models.target, drafter, verifier)[0]

    def reference_method(self) -> DecodingMethod:
        return FakeEngineMethod(FakeEngineParams(), self.models)

    def engine_info(self) -> dict[str, Any]:
        return {"name": "fake-engine", "version": "0", "options": self.params.model_dump()}


ENTRY_POINTS = """
[specbench.methods]
accept-all = broken_methods:AcceptAllMethod
resample-p = broken_methods:ResampleFromPMethod
fake-engine = broken_methods:FakeEngineMethod
ssd-wrong-branch = broken_methods:WrongBranchSsdMethod
"""
