"""Autoregressive decoding: one target call per token, the reference every speedup divides by."""

from __future__ import annotations

from specbench.methods.in_process import ExecutionParams, InProcessMethod
from specbench.plugins import ModelRole


class BaselineParams(ExecutionParams):
    """Plain decoding has only the execution fields."""


class BaselineMethod(InProcessMethod[BaselineParams]):
    """Plain autoregressive decoding with the target's KV cache.

    It is the execution core with a proposer that drafts nothing, so each step samples one
    token from the target through the same logits processing every other method uses.
    """

    name = "baseline"
    description = "Autoregressive decoding with the target alone (the speedup reference)."
    needs = frozenset({ModelRole.TARGET})
    Params = BaselineParams
