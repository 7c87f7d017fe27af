"""Unit costs: what one forward call of each in-process model costs, probed during a run.

The cost ledger says where a method's time went; unit costs say what it should have cost.
Before decoding, the runner's :class:`CostProbe` scores ``rows`` new tokens after a context
as long as the first prompt plus half the token budget (the mean context of a decoding
step), for a few values of ``rows``, in the target (and one token in the draft), timed by
the same ledger the samples use, after a few untimed one-token calls. The sizes are probed
in rounds, each round visiting every size once, and each size keeps its median over the
rounds: rounds see the same drift at every size, so the *shape* between sizes stays sound.
The probe keeps its caches, and after each timed unit it scores that unit's own
decoding-step sizes again (:meth:`CostProbe.near`): a shared machine's bandwidth drifts by
tens of percent within minutes, so a unit is priced at costs measured seconds after it
(:mod:`specbench.costs.phases`). A summary then predicts each method's ms per token from its
own counts of forwards and rows.

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
from specbench.records import PhaseCosts, RunHeader

#: Rows probed in the target before decoding, interpolated linearly in between. Larger
#: forwards are not predicted from it: a unit's repeated steps have their own probe, and
#: a summary takes the rest (prompts) as measured. (Up to 64 rows it took 236 s of a run's
#: start on an AVX2 CPU without bf16 products, where large calls are compute-bound.)
PROBE_ROWS = (1, 2, 4, 8, 16)
REPEATS = 5
WARMUP = 3
#: Repeats of each size probed right after a unit (:meth:`CostProbe.near`), and the largest
#: size probed there (a tree of SpecExec's larger budgets; prompts come once, unprobed).
NEAR_REPEATS = 2
NEAR_ROWS = 64


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
        if self.target_ms and rows < min(self.target_ms):
            return self.target_ms[min(self.target_ms)]
        return interpolate(self.target_ms, rows)


def interpolate(points: dict[int, float], rows: int) -> float | None:
    """ms at ``rows``, linear between the probed sizes ``points``; ``None`` outside them."""
    ordered = sorted(points.items())
    if not ordered or not ordered[0][0] <= rows <= ordered[-1][0]:
        return None
    for (r0, t0), (r1, t1) in itertools.pairwise(ordered):
        if rows <= r1:
            return t0 + (t1 - t0) * (rows - r0) / (r1 - r0)
    return ordered[-1][1]  # one probed size, and ``rows`` is it


class CostProbe:
    """Caches at the probe's context, one per engine kind and model, kept open for a run.

    :meth:`unit_costs` gives the run's cost shape once; :meth:`near` times chain forwards of
    a unit's own sizes right after the unit, on the engines it ran on. A shared machine's
    bandwidth drifts by tens of percent between units, and a forward's compute part does not
    scale with it, so a level taken from one-token steps alone cannot price a 12-row call
    (measured: 1.5x a one-token step in the run against 1.2x in the probe, minutes apart).
    """

    def __init__(
        self,
        target: LanguageModel,
        draft: LanguageModel | None,
        context: Sequence[int],
        engines: Sequence[Execution] = (),
        rows: int = max(NEAR_ROWS, *PROBE_ROWS) + REPEATS,
    ) -> None:
        self.models = {"target": target} if draft is None else {"target": target, "draft": draft}
        self.prefix = list(context)
        self.room = len(self.prefix) + rows
        kinds = {"eager": EAGER}
        for execution in engines:
            if execution.engine == "static" and not execution.compile:
                # Without graphs a sequence takes the smallest cache that holds it, so the
                # probe's own cache size is what decoding at this context would take.
                max_len = max(execution.static_max_len, self.room)
                kinds.setdefault("static", Execution("static", max_len, cuda_graphs=False))
        self.kinds = list(kinds)
        self._engines = [EngineSessions(execution) for execution in kinds.values()]
        self.sessions = {
            (kind, role): engine.session(model, self.room)
            for kind, engine in zip(self.kinds, self._engines, strict=True)
            for role, model in self.models.items()
        }
        # Real tokens (the prompt's own) so no backend takes a shortcut on odd ids.
        self.filler = list(itertools.islice(itertools.cycle(self.prefix), rows))
        try:
            for session in self.sessions.values():  # the context once; every probe follows it
                session.forward_from(self.prefix, len(self.prefix) - 1)
            # Untimed: the first decoding-sized calls after loading ran 33% slow (a 1.5B model
            # on a CPU: 772 ms probed against 582 ms in the run), longer than three repeats.
            for repeat in range(WARMUP):
                for key in self.sessions:
                    self._call(key, 1, repeat)
        except BaseException:
            self.close()
            raise

    def __enter__(self) -> CostProbe:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Return the probe's caches (static ones go back to their model's pool)."""
        for engine in self._engines:
            engine.close()

    def _call(self, key: tuple[str, str], count: int, offset: int = 0) -> float:
        """Seconds of one forward of ``count`` new tokens after the context."""
        model = self.models[key[1]]
        sync = model.synchronize if model.device.type == "cuda" else None
        ledger = CostLedger({id(model): "target"}, sync)
        tokens = self.filler[offset : offset + count]
        with open_ledger(ledger):
            # Starting at the context, the session drops the previous probe's rows.
            self.sessions[key].forward_from(self.prefix + tokens, len(self.prefix))
        return ledger.totals.seconds["target"]

    def _rounds(self, probes: Sequence[tuple[str, str, int]], repeats: int) -> list[float]:
        """The median ms of each probe (kind, role, rows), visited round by round."""
        times: list[list[float]] = [[] for _ in probes]
        for repeat in range(repeats):
            for index, (kind, role, count) in enumerate(probes):
                times[index].append(self._call((kind, role), count, repeat))
        return [1000.0 * statistics.median(seconds) for seconds in times]

    def unit_costs(self, rows: Sequence[int] = PROBE_ROWS, repeats: int = REPEATS) -> UnitCosts:
        """The target at each of ``rows`` and the draft at one row, on every engine kind."""
        probes = [
            (kind, role, count)
            for kind, role in self.sessions
            for count in (rows if role == "target" else (1,))
        ]
        by_kind = {kind: EngineUnitCosts(target_ms={}) for kind in self.kinds}
        for (kind, role, count), ms in zip(probes, self._rounds(probes, repeats), strict=True):
            if role == "target":
                by_kind[kind].target_ms[count] = ms
            else:
                by_kind[kind].draft_ms = ms
        eager = by_kind.pop("eager")
        return UnitCosts(
            context=len(self.prefix),
            target_ms=eager.target_ms,
            draft_ms=eager.draft_ms,
            engines=by_kind,
        )

    def near(self, costs: PhaseCosts, repeats: int = NEAR_REPEATS) -> dict[str, dict[int, float]]:
        """Chain forwards of the sizes a unit's decoding steps had (role -> rows -> ms), timed
        now on the engines it ran on: per role its smallest, largest and costliest size among
        those it called more than once (a prompt's forward comes once per turn; a summary
        interpolates between the probed sizes and prices the rest as before)."""
        probes: list[tuple[str, str, int]] = []
        for role, by_rows in (("target", costs.target_by_rows), ("draft", costs.draft_by_rows)):
            kind = costs.engines.get(role, "eager")
            if role not in self.models or kind not in self.kinds:
                continue  # compiled and graph engines are priced at the eager costs
            sizes = {
                rows: seconds
                for rows, (calls, seconds) in by_rows.items()
                if calls > 1 and rows <= NEAR_ROWS
            }
            if sizes:
                chosen = {min(sizes), max(sizes), max(sizes, key=sizes.__getitem__)}
                probes += [(kind, role, rows) for rows in sorted(chosen)]
        probed: dict[str, dict[int, float]] = {}
        for (_, role, rows), ms in zip(probes, self._rounds(probes, repeats), strict=True):
            probed.setdefault(role, {})[rows] = ms
        return probed


def header_unit_costs(headers: Sequence[RunHeader]) -> UnitCosts | None:
    """The unit costs of a results file: the first session's that probed them (sessions of
    one file share the machine's models; a resumed session probes again)."""
    for header in headers:
        if header.unit_costs:
            return UnitCosts.model_validate(header.unit_costs)
    return None
