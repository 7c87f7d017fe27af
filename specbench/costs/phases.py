"""The cost ledger in records: each unit's phase costs, and each method's per-token split.

:func:`ledger_costs` turns what a :class:`~specbench.models.ledger.CostLedger` measured
during one timed unit into the sample records' :class:`~specbench.records.PhaseCosts`.
:func:`summarize_costs` gives a method's ms per generated token by phase (each unit counted
once, a batch's ledger shared by its samples) and, from the run's unit costs, the ms per
token its forwards alone would cost: the prediction. Where the measured time exceeds the
prediction by more than :data:`GAP_TOLERANCE`, it names the phase holding most of the
difference.

A shared machine's memory bandwidth drifts: on the 2-core machines of this project the same
one-token step of a 1.5B model took 102 to 270 ms within two minutes, and a forward's
compute part does not drift with it, so no single level turns the run's probe into the cost
of every size. Each unit is therefore probed again right after it, at the sizes its decoding
steps had (:meth:`~specbench.costs.units.CostProbe.near`, stored in the records), and its
forwards are priced at those. Sizes its own probe does not cover take the run's probe (the
*shape*) at a level: the unit probe's over the run's probe, or, for records without one, the
baseline's own one-token steps on the same prompt and run (:func:`cost_levels`).
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from specbench.costs.units import UnitCosts, interpolate
from specbench.decoding.types import GenerationResult
from specbench.models.ledger import TIMED_PHASES, CostLedger
from specbench.plugins import DecodingMethod
from specbench.records import PHASES, PhaseCosts, SampleRecord

GAP_TOLERANCE = 0.05
#: Draft forwards of up to this many tokens are priced at the run probe's draft step.
DRAFT_STEP_ROWS = 8


def ledger_costs(
    ledger: CostLedger,
    method: DecodingMethod,
    results: Sequence[GenerationResult],
    wall_s: float,
) -> PhaseCosts:
    """The phase costs of one unit timed at ``wall_s``: the ledger's phases the method marks,
    the phases an engine reported, and ``host`` as the rest (``None`` where unknown)."""
    totals = ledger.totals
    reported: dict[str, float] = {}
    for result in results:
        for name, seconds in (result.costs or {}).items():
            reported[name] = reported.get(name, 0.0) + seconds
    values: dict[str, float | None] = {}
    for name in TIMED_PHASES:
        if name in reported:
            values[name] = reported[name]
        elif name in method.ledger_phases:
            values[name] = totals.seconds[name]
        else:
            values[name] = None
    known = [v for v in values.values() if v is not None]
    # The rest of the wall time; unknown when the method measured nothing at all.
    host = max(0.0, wall_s - sum(known)) if known else None
    marks_target = "target" in method.ledger_phases
    marks_draft = "draft" in method.ledger_phases
    return PhaseCosts(
        unit_s=wall_s,
        draft_s=values["draft"],
        target_s=values["target"],
        verify_s=values["verify"],
        host_s=host,
        target_forwards=totals.forwards("target") if marks_target else None,
        target_rows=totals.rows("target") if marks_target else None,
        draft_forwards=totals.forwards("draft") if marks_draft else None,
        target_by_rows=_pairs(totals.by_rows["target"]) if marks_target else {},
        draft_by_rows=_pairs(totals.by_rows["draft"]) if marks_draft else {},
        syncs=totals.syncs,
        overlapped_draft_s=totals.overlapped_s if totals.overlapped_forwards else None,
        overlapped_draft_forwards=totals.overlapped_forwards or None,
        engines={
            role: engine
            for role, engine in totals.engines.items()
            if (role == "target" and marks_target) or (role == "draft" and marks_draft)
        },
    )


def _pairs(by_rows: dict[int, list[float]]) -> dict[int, tuple[int, float]]:
    return {rows: (int(calls), seconds) for rows, (calls, seconds) in sorted(by_rows.items())}


@dataclass
class CostSummary:
    """A method's ms per generated token by phase (``None``: unknown), the prediction from
    unit costs, the phase that holds the gap when they differ, and the level the prediction
    was priced at (median over units: each unit's own probe over the run's, or the
    baseline's one-token steps over the run's probe where a record has no probe of its own)."""

    ms_per_token: dict[str, float | None]
    measured_ms_per_token: float
    predicted_ms_per_token: float | None = None
    predicted_by_phase: dict[str, float] | None = None
    gap_phase: str | None = None
    level: float | None = None

    @property
    def measured_over_predicted(self) -> float | None:
        if not self.predicted_ms_per_token:
            return None
        return self.measured_ms_per_token / self.predicted_ms_per_token


def unit_key(sample: SampleRecord) -> str:
    """What one timed unit is known by: its batch, or its prompt and run."""
    return sample.batch_id or f"{sample.prompt_id}/{sample.run}"


def cost_levels(reference: Sequence[SampleRecord], unit_costs: UnitCosts) -> dict[str, float]:
    """Per prompt, run and engine (``prompt_id/run@engine``): the reference samples' mean
    one-token target step over the probe's on the same engine, where they made one-token
    steps (plain decoding does). ``reference``: the baseline method's samples on every
    engine the run decoded it on (``baseline`` and a static ``baseline``, say): the probe
    gives each engine's cost shape, and a shared machine drifts too much between the
    probe's calls for its ratio *between* engines to hold (a repeated probe gave the static
    engine 0.93x and 1.12x the eager session's one-token step)."""
    levels: dict[str, float] = {}
    for sample in reference:
        if sample.costs is None:
            continue
        engine = sample.costs.engines.get("target", "eager")
        one = sample.costs.target_by_rows.get(1)
        probed = unit_costs.for_engine(engine).target_at(1)
        if one and one[0] and probed:
            key = f"{sample.prompt_id}/{sample.run}@{engine}"
            levels[key] = 1000.0 * one[1] / one[0] / probed
    return levels


def level_for(levels: dict[str, float], sample: SampleRecord) -> float | None:
    """The level to price ``sample``'s forwards at: its engine's on its prompt and run, else
    the eager session's (engines the reference did not decode on)."""
    engine = sample.costs.engines.get("target", "eager") if sample.costs else "eager"
    key = f"{sample.prompt_id}/{sample.run}"
    return levels.get(f"{key}@{engine}", levels.get(f"{key}@eager"))


def summarize_costs(
    samples: Sequence[SampleRecord],
    unit_costs: UnitCosts | None = None,
    levels: dict[str, float] | None = None,
) -> CostSummary | None:
    """The per-token cost split of one method's samples (``None`` when none has a ledger);
    ``levels`` (from :func:`cost_levels`) scale the unit costs prompt by prompt."""
    units: dict[str, PhaseCosts] = {}
    unit_levels: dict[str, float] = {}
    tokens = 0
    for sample in samples:
        if sample.costs is None:
            continue
        tokens += sample.new_tokens
        key = unit_key(sample)
        units.setdefault(key, sample.costs)
        level = _probed_level(sample.costs, unit_costs) or level_for(levels or {}, sample)
        if level is not None:
            unit_levels.setdefault(key, level)
    if not units or tokens == 0:
        return None
    ledgers = list(units.values())
    per_token: dict[str, float | None] = {}
    for name in PHASES:
        parts = [costs.seconds(name) for costs in ledgers]
        known = [p for p in parts if p is not None]
        per_token[name] = None if len(known) < len(parts) else 1000.0 * sum(known) / tokens
    measured = 1000.0 * sum(costs.unit_s for costs in ledgers) / tokens
    summary = CostSummary(per_token, measured)
    # Only forwards the ledger counted can be priced (an engine's own timings cannot).
    if unit_costs is not None and all(c.target_forwards is not None for c in ledgers):
        scales = [unit_levels.get(key, 1.0) for key in units]
        predicted = _predict(ledgers, unit_costs, scales)
        if unit_levels:
            summary.level = statistics.median(unit_levels.values())
        summary.predicted_by_phase = {k: 1000.0 * v / tokens for k, v in predicted.items()}
        summary.predicted_ms_per_token = sum(summary.predicted_by_phase.values())
        ratio = summary.measured_over_predicted
        if ratio is not None and ratio > 1 + GAP_TOLERANCE:
            summary.gap_phase = _gap_phase(per_token, summary.predicted_by_phase)
    return summary


def _predict(
    ledgers: Sequence[PhaseCosts], unit_costs: UnitCosts, scales: Sequence[float]
) -> dict[str, float]:
    """Seconds the units' forwards would cost at unit costs, with free drafting bookkeeping,
    verification and host work: the loop's floor for these models. Each size a unit's own
    probe covers (:attr:`PhaseCosts.probed_ms`) is priced at it; the others at the run's
    probe times the unit's level (its own probe's smallest size over the run's probe there,
    else ``scales``). Prompt-sized forwards are taken as measured."""
    totals = {"draft": 0.0, "target": 0.0}
    for costs, scale in zip(ledgers, scales, strict=True):
        for role, by_rows in (("target", costs.target_by_rows), ("draft", costs.draft_by_rows)):
            shape = _run_probe(unit_costs.for_engine(costs.engines.get(role)), role)
            near = costs.probed_ms.get(role, {})
            level = _near_level(near, shape) or scale
            for rows, (calls, seconds) in by_rows.items():
                unit = interpolate(near, rows)
                if unit is None and (ms := shape(rows)) is not None:
                    unit = level * ms
                totals[role] += seconds if unit is None else calls * unit / 1000.0
    return {**totals, "verify": 0.0, "host": 0.0}


def _probed_level(costs: PhaseCosts, unit_costs: UnitCosts | None) -> float | None:
    """The unit's own probe over the run's, at the target's smallest probed size."""
    if unit_costs is None:
        return None
    shape = _run_probe(unit_costs.for_engine(costs.engines.get("target")), "target")
    return _near_level(costs.probed_ms.get("target", {}), shape)


def _run_probe(costs: UnitCosts, role: str) -> Callable[[int], float | None]:
    """The run's probe as ms per call of ``rows`` (``None``: not predicted, a prompt)."""
    if role == "target":
        return costs.target_at
    draft_ms = costs.draft_ms
    # A draft forward of a few tokens (a catch-up after full acceptance) costs one draft
    # step: a small model's step is bound by reading its weights, not by rows.
    return lambda rows: draft_ms if rows <= DRAFT_STEP_ROWS else None


def _near_level(near: dict[int, float], shape: Callable[[int], float | None]) -> float | None:
    if not near:
        return None
    rows = min(near)
    probed = shape(rows)
    return near[rows] / probed if probed else None


def _gap_phase(measured: dict[str, float | None], predicted: dict[str, float]) -> str:
    excess = {
        name: (measured[name] or 0.0) - predicted.get(name, 0.0)
        for name in PHASES
        if measured[name] is not None
    }
    return max(excess, key=lambda name: excess[name])
