"""The cost ledger: where each generation's wall time goes, phase by phase.

Four phases add up to a sample's wall time:

* ``draft``: proposing (draft-model forwards, heads, n-gram lookups and the draft's own
  sampling), and the drafter hearing the outcome;
* ``target``: the target model's forward calls (with the rows they scored);
* ``verify``: turning the target's logits into distributions and deciding what to keep;
* ``host``: everything else (bookkeeping, cache updates, Python), the wall time the other
  three leave.

Phases nest exclusively: a target forward made while drafting counts as target time only,
so the parts never overlap. The runner opens a ledger around each timed unit; loops mark
phases with :func:`phase` and sessions mark forwards with :func:`forward`, which cost two
clock reads when a ledger is open and nothing else when none is (the audit, warm-ups).

On a CPU, torch ops finish before they return, so the clock alone is honest. On CUDA the
ledger synchronises the device at each phase boundary (one ``cuda.synchronize`` per
boundary, three to four per step), which is the synchronisation a split by phase needs;
``syncs`` counts them so their cost can be stated (on an H200 with CUDA graphs about 30 us
each, 6-8% of a 3 ms token: ``benchmarks/ledger_sync_cost.py``).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager, nullcontext
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Literal

Phase = Literal["draft", "target", "verify"]
TIMED_PHASES: tuple[Phase, ...] = ("draft", "target", "verify")


@dataclass
class LedgerTotals:
    """What a ledger measured: seconds per phase, and forward calls by model role."""

    seconds: dict[str, float] = field(default_factory=lambda: dict.fromkeys(TIMED_PHASES, 0.0))
    #: Forwards by role and by the tokens they processed: ``{role: {rows: [calls, s]}}``.
    by_rows: dict[str, dict[int, list[float]]] = field(
        default_factory=lambda: {"target": {}, "draft": {}}
    )
    syncs: int = 0
    #: The engine kind each role's forwards ran on (``"eager"``, ``"static"``, ...;
    #: ``"mixed"`` when one unit used several): which unit costs price them.
    engines: dict[str, str] = field(default_factory=dict)
    #: Draft work another process did while this one worked (asynchronous speculation):
    #: seconds and forwards beside the phases, never part of the wall time they split.
    overlapped_s: float = 0.0
    overlapped_forwards: int = 0

    def forwards(self, role: str) -> int:
        return int(sum(calls for calls, _ in self.by_rows[role].values()))

    def rows(self, role: str) -> int:
        return int(sum(rows * calls for rows, (calls, _) in self.by_rows[role].items()))


class CostLedger:
    """Exclusive phase timing for one timed unit (one prompt, or one batch).

    ``roles`` maps ``id(model)`` to ``"target"`` or ``"draft"``; forwards of any other model
    count as drafting (a helper model is never the model being sped up).
    """

    def __init__(
        self,
        roles: Mapping[int, Literal["target", "draft"]],
        synchronize: Callable[[], None] | None = None,
    ) -> None:
        self.roles = dict(roles)
        self.totals = LedgerTotals()
        self._synchronize = synchronize
        self._current: str | None = None
        self._since = 0.0
        self._stack: list[str | None] = []

    def _switch(self, to: str | None) -> None:
        if self._synchronize is not None:
            self._synchronize()
            self.totals.syncs += 1
        now = time.perf_counter()
        if self._current is not None:
            self.totals.seconds[self._current] += now - self._since
        self._current = to
        self._since = now

    @contextmanager
    def timed(self, name: Phase) -> Iterator[None]:
        """Count the time inside the block as ``name`` (minus nested phases)."""
        self._stack.append(self._current)
        self._switch(name)
        try:
            yield
        finally:
            self._switch(self._stack.pop())

    @contextmanager
    def forward(self, model: object, rows: int, engine: str = "eager") -> Iterator[None]:
        """A forward call of ``model`` that processes ``rows`` tokens on ``engine``."""
        role = self.roles.get(id(model), "draft")
        seen = self.totals.engines.setdefault(role, engine)
        if seen != engine:
            self.totals.engines[role] = "mixed"
        started = time.perf_counter()
        with self.timed(role):
            yield
        bucket = self.totals.by_rows[role].setdefault(rows, [0, 0.0])
        bucket[0] += 1
        bucket[1] += time.perf_counter() - started

    def add_overlapped(self, seconds: float, forwards: int) -> None:
        """Count draft work done concurrently elsewhere (see ``LedgerTotals.overlapped_s``)."""
        self.totals.overlapped_s += seconds
        self.totals.overlapped_forwards += forwards


_ACTIVE: ContextVar[CostLedger | None] = ContextVar("specbench_cost_ledger", default=None)
_NOTHING = nullcontext()


def phase(name: Phase) -> AbstractContextManager[None]:
    """Time the block as ``name`` in the open ledger (nothing when none is open)."""
    ledger = _ACTIVE.get()
    return _NOTHING if ledger is None else ledger.timed(name)


def forward(model: object, rows: int, engine: str = "eager") -> AbstractContextManager[None]:
    """Time the block as a forward of ``model`` over ``rows`` tokens on ``engine`` (the
    session's kind, see :attr:`specbench.models.base.Session.engine`) in the open ledger."""
    ledger = _ACTIVE.get()
    return _NOTHING if ledger is None else ledger.forward(model, rows, engine)


def overlapped(seconds: float, forwards: int) -> None:
    """Record draft work another process did beside the target in the open ledger."""
    ledger = _ACTIVE.get()
    if ledger is not None:
        ledger.add_overlapped(seconds, forwards)


@contextmanager
def open_ledger(ledger: CostLedger) -> Iterator[CostLedger]:
    """Make ``ledger`` the one :func:`phase` and :func:`forward` write to inside the block."""
    token = _ACTIVE.set(ledger)
    try:
        yield ledger
    finally:
        _ACTIVE.reset(token)


def active_ledger() -> CostLedger | None:
    """The ledger open in this context, if any (methods that time an engine's own loop)."""
    return _ACTIVE.get()
