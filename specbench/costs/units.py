"""Unit costs: what one forward call of each in-process model costs, measured once per run.

The cost ledger says where a method's time went; unit costs say what it should have cost.
Before decoding, the runner scores ``rows`` new tokens after a context as long as the first
prompt plus half the token budget (the mean context of a decoding step), for a few
values of ``rows``, in the target (and one token in the draft), timed by the same ledger
the samples use, after a few untimed one-token calls. The sizes are probed in rounds, each
round visiting every size once, and each size keeps its median over the rounds: a shared
machine's bandwidth drifts by tens of percent within seconds, and rounds see the same drift
at every size, so the *ratios* between sizes stay sound (:mod:`specbench.costs.phases` prices the
level from the run itself). A summary then predicts each method's ms per token from its own
counts of forwards and rows.

Engines differ in cost shape (the static engine's lean forward is cheaper per call than the
eager session's), so every engine kind the run's methods decode on is probed, in the same
rounds: ``target_ms``/``draft_ms`` are the eager session's, ``engines`` holds the others.
Kinds that are not probed (compiled steps, CUDA graphs: capturing each probe size would cost
more than the run) are priced at the eager costs.
"""

from __future__ import annotations

import itertools
import statistics
from collections.abc import Sequence

from pydantic import BaseModel, Field

from specbench.decoding.execution import EAGER, EngineSessions, Execution
from specbench.models.base import LanguageModel
from specbench.models.ledger import CostLedger, open_ledger
from specbench.records import RunHeader

#: Rows probed in the target, interpolated linearly in between. Larger forwards (prompts,
#: the largest trees) are not predicted: a summary takes them as measured.
PROBE_ROWS = (1, 2, 4, 8, 16, 32, 64)
REPEATS = 5
WARMUP = 3


class EngineUnitCosts(BaseModel):
    """One engine kind's probed costs (ms): the target at each row count, the draft's step."""

    target_ms: dict[int, float]
    draft_ms: float | None = None


class UnitCosts(BaseModel):
    """Milliseconds of one forward call that processes ``rows`` tokens after ``context``
    cached ones: ``target_ms[rows]``, and the draft's one-token step ``draft_ms``, on the
    eager session; ``engines`` the same for the other engine kinds the run used."""

    context: int = Field(description="Cached tokens the probe scored after.")
    target_ms: dict[int, float]
    draft_ms: float | None = None
    engines: dict[str, EngineUnitCosts] = Field(
        default_factory=dict, description="Other engine kinds (static, ...), probed alike."
    )

    def for_engine(self, engine: str | None) -> UnitCosts:
        """The costs to price forwards made on ``engine`` with: its own where it was probed,
        else the eager session's."""
        probed = self.engines.get(engine or "eager")
        if probed is None:
            return self
        return UnitCosts(context=self.context, target_ms=probed.target_ms, draft_ms=probed.draft_ms)

    def target_at(self, rows: int) -> float | None:
        """The target's cost at ``rows`` (ms), or ``None`` past the largest probe (a prompt:
        extrapolating a prefill from decoding-sized calls would be a guess)."""
        points = sorted(self.target_ms.items())
        if not points or rows > points[-1][0]:
            return None
        if rows <= points[0][0]:
            return points[0][1]
        for (r0, t0), (r1, t1) in itertools.pairwise(points):
            if rows <= r1:
                return t0 + (t1 - t0) * (rows - r0) / (r1 - r0)
        return points[-1][1]


def measure_unit_costs(
    target: LanguageModel,
    draft: LanguageModel | None,
    context: Sequence[int],
    rows: Sequence[int] = PROBE_ROWS,
    repeats: int = REPEATS,
    engines: Sequence[Execution] = (),
) -> UnitCosts:
    """Probe ``target`` at each of ``rows`` (and ``draft`` at one row) after ``context``, on
    the eager session and on each of ``engines`` (static executions; others are skipped)."""
    probed = {"eager": EAGER}
    room = len(context) + max(rows) + repeats
    for execution in engines:
        if execution.engine == "static" and not execution.compile:
            # Without graphs a sequence takes the smallest cache that holds it, so the
            # probe's own cache size is what decoding at this context would take.
            max_len = max(execution.static_max_len, room)
            probed.setdefault("static", Execution("static", max_len, cuda_graphs=False))
    models = [target] if draft is None else [target, draft]
    costs = _forward_ms(models, list(probed.values()), context, rows, repeats, room)
    by_kind = {
        kind: EngineUnitCosts(
            target_ms=costs[(kind_index, 0)], draft_ms=costs.get((kind_index, 1), {}).get(1)
        )
        for kind_index, kind in enumerate(probed)
    }
    eager = by_kind.pop("eager")
    return UnitCosts(
        context=len(context), target_ms=eager.target_ms, draft_ms=eager.draft_ms, engines=by_kind
    )


def _forward_ms(
    models: Sequence[LanguageModel],
    executions: Sequence[Execution],
    context: Sequence[int],
    rows: Sequence[int],
    repeats: int,
    room: int,
) -> dict[tuple[int, int], dict[int, float]]:
    """Per (execution, model) index pair: the median ms of a call of each size (the first
    model at every size in ``rows``, the others at one row), every probe interleaved round
    by round, in caches of ``room`` positions."""
    prefix = list(context)
    caches = {
        (e, m): EngineSessions(execution).session(model, room)
        for e, execution in enumerate(executions)
        for m, model in enumerate(models)
    }
    try:
        for session in caches.values():  # the context once; every probe follows it
            session.forward_from(prefix, len(prefix) - 1)
        # Real tokens (the prompt's own) so no backend takes a shortcut on odd ids.
        filler = list(itertools.islice(itertools.cycle(prefix), max(rows) + repeats))
        # Untimed: the first decoding-sized calls after loading ran 33% slow (a 1.5B model on
        # a CPU: 772 ms probed against 582 ms in the run), longer than three repeats.
        for repeat in range(WARMUP):
            for session in caches.values():
                session.forward_from(prefix + filler[repeat : repeat + 1], len(prefix))
        probes = [(key, count) for key in caches for count in (rows if key[1] == 0 else (1,))]
        times: dict[tuple[tuple[int, int], int], list[float]] = {probe: [] for probe in probes}
        for repeat in range(repeats):
            for key, count in probes:
                model = models[key[1]]
                sync = model.synchronize if model.device.type == "cuda" else None
                ledger = CostLedger({id(model): "target"}, sync)
                with open_ledger(ledger):
                    # Starting at the context, the session drops the previous probe's rows.
                    caches[key].forward_from(prefix + filler[repeat : repeat + count], len(prefix))
                times[(key, count)].append(ledger.totals.seconds["target"])
    finally:
        for session in caches.values():
            session.close()
    costs: dict[tuple[int, int], dict[int, float]] = {key: {} for key in caches}
    for (key, count), seconds in times.items():
        costs[key][count] = 1000.0 * statistics.median(seconds)
    return costs


def header_unit_costs(headers: Sequence[RunHeader]) -> UnitCosts | None:
    """The unit costs of a results file: the first session's that probed them (sessions of
    one file share the machine's models; a resumed session probes again)."""
    for header in headers:
        if header.unit_costs:
            return UnitCosts.model_validate(header.unit_costs)
    return None
