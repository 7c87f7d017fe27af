"""Speculative speculative decoding (SSD / Saguaro; Kumar, Dao and May, ICLR 2026).

The draft runs in its own worker process and, while the target verifies a round, drafts
the next round for the outcomes it thinks likeliest (:mod:`specbench.decoding.ssd`); on a
hit the next round starts with its drafts ready. On a CPU the worker takes its own cores;
with two or more CUDA devices, the second.
"""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext
from typing import Literal

from pydantic import Field, NonNegativeInt, PositiveInt, model_validator

from specbench.cpu_pinning import pinned, split_cores
from specbench.decoding.draft_worker import WorkerDraftSide, WorkerSetup
from specbench.decoding.ssd import FanOut, SpeculationDrafter
from specbench.decoding.ssd_proposer import DraftSide, InlineDraftSide, SpeculationCacheProposer
from specbench.decoding.types import GenerationRequest, GenerationResult
from specbench.methods.in_process import InProcessMethod, OneSequenceParams
from specbench.plugins import MethodModels, ModelRole, RunContext


class SsdParams(OneSequenceParams):
    batch_size: int = Field(
        1, ge=1, le=1, description="Always 1: the speculation cache follows one sequence."
    )
    k: int = Field(4, ge=1, le=32, description="Draft tokens per round.")
    fan_out: int = Field(
        3, ge=0, le=64, description="Branches per glue position (SSD's --f), both schedules."
    )
    fan_out_hit: list[int] | None = Field(
        None, description="k + 1 branch counts used after a cache hit (SSD's --flh)."
    )
    fan_out_miss: list[int] | None = Field(
        None, description="k + 1 branch counts used after a miss (SSD's --flm)."
    )
    miss_policy: Literal["jit", "none"] = Field(
        "jit",
        description="On a cache miss: draft k tokens now while the target waits (jit), or "
        "propose nothing and decode one target token (none).",
    )
    mode: Literal["async", "inline", "counterfactual"] = Field(
        "async",
        description="async: the draft in a worker process, speculating while the target "
        "verifies; inline: the same algorithm in this process, speculation on the critical "
        "path; counterfactual: synchronous speculative decoding that only ranks each "
        "outcome among the draft's candidates (the hit rate of every fan-out in sweep).",
    )
    sweep: list[PositiveInt | list[NonNegativeInt]] = Field(
        [1, 2, 3, 4],
        description="Fan-outs whose hit rate every record reports, from the rank of each "
        "outcome among its glue row's candidates: F (the same at every position; "
        "ssd_cf_hit_rate_f<F>) or a schedule of k + 1 widths (ssd_cf_hit_rate_f3-2-1-1).",
    )
    saguaro_x: float | None = Field(
        None,
        gt=0,
        le=1,
        description="Saguaro sampling (SSD's --x), at temperature > 0: the draft's top "
        "fan_out + 1 probabilities times x, renormalised, when drafting and in the q the "
        "verifier checks (exact); x < 1 trades acceptance for cache hits.",
    )
    draft_device: str = Field(
        "auto",
        pattern=r"^(auto|cpu|cuda(:\d+)?)$",
        description="The worker's device: auto takes the second CUDA device when the draft "
        "is on CUDA and there are two or more, else the draft's own.",
    )
    draft_threads: int = Field(1, ge=1, description="Torch threads of the worker.")
    pin_cores: bool = Field(
        True,
        description="On a CPU, pin the worker to the last draft_threads cores and the "
        "target to the others (Linux), so the two run side by side.",
    )

    @model_validator(mode="after")
    def _schedules(self) -> SsdParams:
        for name in ("fan_out_hit", "fan_out_miss"):
            value = getattr(self, name)
            if value is not None and (len(value) != self.k + 1 or min(value) < 0):
                raise ValueError(
                    f"{name} needs k + 1 = {self.k + 1} branch counts >= 0, one per glue "
                    f"position; got {value}"
                )
        for entry in self.sweep:
            if isinstance(entry, list) and len(entry) != self.k + 1:
                raise ValueError(
                    f"sweep schedule {entry} needs k + 1 = {self.k + 1} widths, one per glue "
                    "position (or give one number for the same width everywhere)"
                )
        return self

    def schedule(self) -> FanOut:
        uniform = (self.fan_out,) * (self.k + 1)
        hit = tuple(self.fan_out_hit) if self.fan_out_hit is not None else uniform
        miss = tuple(self.fan_out_miss) if self.fan_out_miss is not None else uniform
        return FanOut(hit, miss)


class SsdMethod(InProcessMethod[SsdParams]):
    """SSD: the draft speculates on the verification outcome while the target verifies.

    Exact at any temperature: the distributions stored with a cached continuation are the
    ``q`` the shared verifier checks (greedy at temperature 0, token for token). Records add
    the cache hit rate, tokens per round on hits and misses, the accepted-count histogram
    on hits, the target's wait for drafts, the worker's busy and idle time and the
    counterfactual hit rate of each fan-out in ``sweep``; the cost ledger shows the
    worker's draft work beside the phases as overlapped.
    """

    name = "ssd"
    description = "Async speculation (SSD/Saguaro): draft worker pre-drafts likely outcomes."
    needs = frozenset({ModelRole.TARGET, ModelRole.DRAFT})
    Params = SsdParams
    accept_length_model = "chain_analytic"
    #: The draft side (the audit's tests swap in a deliberately broken twin).
    drafter: type[SpeculationDrafter] = SpeculationDrafter

    def __init__(self, params: SsdParams, models: MethodModels) -> None:
        super().__init__(params, models)
        draft = models.require_draft()
        schedule = params.schedule()
        saguaro = None if params.saguaro_x is None else (params.fan_out + 1, params.saguaro_x)
        self._split: tuple[list[int], list[int]] | None = None
        side: DraftSide
        if params.mode == "async":
            device = self._worker_device(params.draft_device)
            if params.pin_cores and (device or str(draft.device)).startswith("cpu"):
                self._split = split_cores(params.draft_threads)
            spec = models.specs.draft if models.specs is not None else None
            setup = WorkerSetup(
                k=params.k,
                fan_out=schedule,
                miss_policy=params.miss_policy,
                vocab_size=draft.vocab_size,
                spec=spec.model_dump() if spec is not None else None,
                model=None if spec is not None else draft,
                device=device,
                threads=params.draft_threads,
                cores=tuple(self._split[1]) if self._split else None,
                drafter=self.drafter,
                saguaro=saguaro,
            )
            self.worker: WorkerDraftSide | None = WorkerDraftSide(setup, draft.simulate_costs)
            side = self.worker
        else:
            self.worker = None
            drafter = self.drafter(
                draft,
                params.k,
                schedule,
                params.miss_policy,
                speculate_branches=params.mode == "inline",
                saguaro=saguaro,
            )
            side = InlineDraftSide(drafter)
        self.side = side
        self.proposer = SpeculationCacheProposer(
            side, params.k, params.sweep, caches=params.mode != "counterfactual"
        )

    def _worker_device(self, wanted: str) -> str | None:
        """The worker's device, or ``None`` for the draft spec's own."""
        if wanted != "auto":
            return wanted
        draft = self.models.require_draft()
        if draft.device.type == "cuda":
            import torch

            if torch.cuda.device_count() >= 2:
                return "cuda:1"
        return None

    def prepare(self, context: RunContext) -> None:
        # The worker loads its own copy of the draft: before the warm-up, never timed.
        if self.worker is not None:
            context.on_progress("starting the ssd draft worker")
            self.worker.launch()

    def generate_batch(self, requests: list[GenerationRequest]) -> list[GenerationResult]:
        if self.worker is not None:
            # The audit turns simulated costs off on the models: the worker's copy follows.
            self.worker.simulate_costs = self.models.require_draft().simulate_costs
        with self._pinned():
            return super().generate_batch(requests)

    def finish(self, results: list[GenerationResult]) -> None:
        # Where the two sides ran, for the record (0: not pinned).
        target, worker = (len(self._split[0]), len(self._split[1])) if self._split else (0, 0)
        for result in results:
            result.stats.extra["ssd_target_cores"] = float(target)
            result.stats.extra["ssd_worker_cores"] = float(worker)

    def _pinned(self) -> AbstractContextManager[None]:
        if self._split is None:
            return nullcontext()
        mine = self._split[0]
        threads = self.params.threads or len(mine)
        return pinned(mine, threads)

    def close(self) -> None:
        self.side.close()
