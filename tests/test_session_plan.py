"""The session plan: every method prepared once, in order, and closed exactly once on every
exit (run, audit, training and Ray shards share it)."""

from __future__ import annotations

from typing import Any

import pytest
from helpers import toy_pair

from specbench.errors import SpecbenchError
from specbench.plugins import DecodingMethod, GenerationRequest, GenerationResult, RunContext
from specbench.run.plan import SessionPlan


class Recording(DecodingMethod):
    def __init__(self, label: str, calls: list[str], fail: str = "") -> None:
        super().__init__(self.Params(), toy_pair())
        self.label, self.calls, self.fail = label, calls, fail

    def generate(self, request: GenerationRequest) -> GenerationResult:
        raise NotImplementedError

    def prepare(self, context: RunContext) -> None:
        self.calls.append(f"prepare {self.label}")
        if self.fail == "prepare":
            raise SpecbenchError(f"{self.label} cannot start", "fix it")

    def close(self) -> None:
        self.calls.append(f"close {self.label}")
        if self.fail == "close":
            raise RuntimeError("close failed")


def _plan(calls: list[str], apart: frozenset[str] = frozenset(), **fail: str) -> SessionPlan:
    labels = ["baseline", "a", "b"]
    methods: dict[str, Any] = {x: Recording(x, calls, fail.get(x, "")) for x in labels}
    plan = SessionPlan(
        resolved=None,  # type: ignore[arg-type]
        prompts=[],
        models=toy_pair(),
        methods=methods,
        references=dict.fromkeys(labels, "baseline"),
        order=labels,
        apart=apart,
    )
    plan.context = lambda label: None  # type: ignore[assignment,method-assign,return-value]
    return plan


def test_methods_are_prepared_once_in_order_and_closed_once() -> None:
    calls: list[str] = []
    with _plan(calls, apart=frozenset({"b"})) as plan:
        plan.prepare_together()
        plan.prepare_together()  # a second call prepares nothing again
        plan.prepare("b")  # its turn
        plan.finish("b")
    assert calls == [
        "prepare baseline",
        "prepare a",
        "prepare b",
        "close b",
        "close baseline",
        "close a",
    ]


def test_a_failing_prepare_closes_every_method_and_propagates() -> None:
    calls: list[str] = []
    plan = _plan(calls, a="prepare")
    with pytest.raises(SpecbenchError, match="a cannot start"):
        plan.prepare_together()
    assert calls == ["prepare baseline", "prepare a", "close baseline", "close a", "close b"]
    plan.close()  # nothing is closed twice
    assert calls.count("close a") == 1


def test_a_failing_close_does_not_keep_the_others_open() -> None:
    calls: list[str] = []
    with _plan(calls, baseline="close"):
        pass
    assert calls == ["close baseline", "close a", "close b"]
