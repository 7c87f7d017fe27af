"""Unit costs: what one forward call of each in-process model costs, measured once per run.

The cost ledger says where a method's time went; unit costs say what it should have cost.
Before decoding, the runner scores ``rows`` new tokens after a context as long as the first
prompt plus half the token budget (the mean context of a decoding step), for a few
values of ``rows``, in the target (and one token in the draft), timed by the same ledger
the samples use, after a few untimed one-token calls. The sizes are probed in rounds, each
round visiting every size once, and each size keeps its median over the rounds: a shared
machine's bandwidth drifts by tens of percent within seconds, and rounds see the same drift
at every size, so the *ratios* between sizes stay sound (:mod:`specbench.costs` prices the
level from the run itself). A summary then predicts each method's ms per token from its own
counts of forwards and rows.
"""

from __future__ import annotations

import itertools
import statistics
from collections.abc import Sequence

from pydantic import BaseModel, Field

from specbench.decoding.ledger import CostLedger, open_ledger
from specbench.models.base import LanguageModel
from specbench.records import RunHeader

#: Rows probed in the target, interpolated linearly in between. Larger forwards (prompts,
#: the largest trees) are not predicted: a summary takes them as measured.
PROBE_ROWS = (1, 2, 4, 8, 16, 32, 64)
REPEATS = 5
WARMUP = 3


class UnitCosts(BaseModel):
    """Milliseconds of one forward call that processes ``rows`` tokens after ``context``
    cached ones: ``target_ms[rows]``, and the draft's one-token step ``draft_ms``."""

    context: int = Field(description="Cached tokens the probe scored after.")
    target_ms: dict[int, float]
    draft_ms: float | None = None

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
) -> UnitCosts:
    """Probe ``target`` at each of ``rows`` (and ``draft`` at one row) after ``context``."""
    if draft is None:
        return UnitCosts(
            context=len(context), target_ms=_forward_ms([target], context, rows, repeats)[0]
        )
    target_ms, draft_costs = _forward_ms([target, draft], context, rows, repeats)
    draft_ms = draft_costs[1]
    return UnitCosts(context=len(context), target_ms=target_ms, draft_ms=draft_ms)


def _forward_ms(
    models: Sequence[LanguageModel], context: Sequence[int], rows: Sequence[int], repeats: int
) -> list[dict[int, float]]:
    """Per model: the median ms of a call of each size (the first model at every size in
    ``rows``, the others at one row), the sizes interleaved round by round."""
    prefix = list(context)
    sessions = [model.new_session() for model in models]
    for session in sessions:  # the context once; every probe follows it
        session.forward_from(prefix, len(prefix) - 1)
    # Real tokens (the prompt's own) so no backend takes a shortcut on odd ids.
    filler = list(itertools.islice(itertools.cycle(prefix), max(rows) + repeats))
    # Untimed: the first decoding-sized calls after loading ran 33% slow (a 1.5B model on a
    # CPU: 772 ms probed against 582 ms in the run), longer than three repeats.
    for repeat in range(WARMUP):
        for session in sessions:
            session.forward_from(prefix + filler[repeat : repeat + 1], len(prefix))
    probes = [(0, count) for count in rows] + [(i, 1) for i in range(1, len(models))]
    times: dict[tuple[int, int], list[float]] = {probe: [] for probe in probes}
    for repeat in range(repeats):
        for index, count in probes:
            model = models[index]
            sync = model.synchronize if model.device.type == "cuda" else None
            ledger = CostLedger({id(model): "target"}, sync)
            with open_ledger(ledger):
                # Starting at the context, the session drops the previous probe's rows first.
                sessions[index].forward_from(prefix + filler[repeat : repeat + count], len(prefix))
            times[(index, count)].append(ledger.totals.seconds["target"])
    costs: list[dict[int, float]] = [{} for _ in models]
    for (index, count), seconds in times.items():
        costs[index][count] = 1000.0 * statistics.median(seconds)
    return costs


def header_unit_costs(headers: Sequence[RunHeader]) -> UnitCosts | None:
    """The unit costs of a results file: the first session's that probed them (sessions of
    one file share the machine's models; a resumed session probes again)."""
    for header in headers:
        if header.unit_costs:
            return UnitCosts.model_validate(header.unit_costs)
    return None
