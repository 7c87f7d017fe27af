"""SpecExec (Svirschevski et al., 2024): a best-first draft tree, verified in one target call."""

from __future__ import annotations

from pydantic import Field

from specbench.decoding.tree import TreeDrafter
from specbench.methods.in_process import ExecutionParams, InProcessMethod
from specbench.plugins import MethodModels, ModelRole


class SpecExecParams(ExecutionParams):
    budget: int = Field(16, ge=1, le=1024, description="Tree nodes per target call.")
    max_depth: int = Field(8, ge=1, le=128, description="Tree levels at most.")
    branching: int = Field(4, ge=1, le=64, description="Children proposed per expanded node.")
    beam: int = Field(4, ge=1, le=256, description="Nodes added (and draft-scored) per round.")
    draft_temperature: float = Field(
        1.0, gt=0, description="Shapes the tree only; the output stays exact."
    )


class SpecExecMethod(InProcessMethod[SpecExecParams]):
    """Draft tree grown by cumulative probability; the target keeps the path its own samples take.

    Records add ``tree_size``, ``branch_prune_rate`` (share of proposed children that did not
    fit the budget), ``effective_parallelism`` (tree nodes per level) and
    ``max_active_branches`` (the widest level).
    """

    name = "specexec"
    description = "Best-first draft tree, one tree-attention target call, exact (SpecExec)."
    needs = frozenset({ModelRole.TARGET, ModelRole.DRAFT})
    Params = SpecExecParams

    def __init__(self, params: SpecExecParams, models: MethodModels) -> None:
        super().__init__(params, models)
        self.proposer = TreeDrafter(
            models.require_draft(),
            budget=params.budget,
            max_depth=params.max_depth,
            branching=params.branching,
            beam=params.beam,
            temperature=params.draft_temperature,
        )
