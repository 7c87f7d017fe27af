"""Token Recycling (Luo et al., ACL 2025): draft trees from the target's own past top-k."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, field_validator

from specbench.decoding.recycling import RecyclingProposer
from specbench.decoding.types import GenerationResult
from specbench.errors import SpecbenchError
from specbench.methods.in_process import ExecutionParams, InProcessMethod
from specbench.plugins import MethodModels, ModelRole, RunContext


class TokenRecyclingParams(ExecutionParams):
    top_k: int = Field(8, ge=1, le=64, description="Successors kept per token (matrix width).")
    branching: list[int] = Field(
        default_factory=lambda: [4, 2, 2, 1, 1],
        description="Children per node at each depth of the static tree.",
    )
    max_nodes: int = Field(24, ge=1, le=1024, description="Tree nodes per step at most.")
    matrix_path: str | None = Field(
        None,
        description="Load the adjacency matrix from this file if it exists; save it after "
        "every generation (relative to the preset file).",
    )

    @field_validator("branching")
    @classmethod
    def _branching(cls, value: list[int]) -> list[int]:
        if not value or any(b < 1 for b in value):
            raise ValueError("branching needs at least one depth, each with >= 1 child")
        return value


class TokenRecyclingMethod(InProcessMethod[TokenRecyclingParams]):
    """Token Recycling; exact (the target's samples walk the tree). The matrix persists across
    the prompts of a run.

    Records add ``recycling_tree_size`` and ``recycling_matrix_coverage`` (share of token
    ids with a filled row).
    """

    name = "token-recycling"
    description = "Token Recycling: BFS trees from a matrix of the target's past top-k (exact)."
    needs = frozenset({ModelRole.TARGET})
    Params = TokenRecyclingParams

    def __init__(self, params: TokenRecyclingParams, models: MethodModels) -> None:
        super().__init__(params, models)
        if max(params.branching) > params.top_k:
            raise SpecbenchError(
                f"token-recycling: branching {params.branching} asks for more children than "
                f"top_k = {params.top_k} keeps",
                "raise top_k or lower branching",
            )
        self.recycling = RecyclingProposer(
            models.target.vocab_size, params.top_k, params.branching, params.max_nodes
        )
        self.proposer = self.recycling
        self.matrix_file: Path | None = None
        self._initial = self.recycling.matrix.rows.clone()

    def prepare(self, context: RunContext) -> None:
        params = self.params
        if params.matrix_path is None:
            return
        self.matrix_file = context.base_dir / params.matrix_path
        if self.matrix_file.exists():
            try:
                self.recycling.matrix.load(self.matrix_file)
            except (ValueError, OSError, RuntimeError) as error:
                raise SpecbenchError(
                    f"token-recycling: cannot load {self.matrix_file}: {error}",
                    "remove the file or point matrix_path elsewhere",
                ) from error
            self._initial = self.recycling.matrix.rows.clone()

    def end_warmup(self) -> None:
        # The matrix as it was before the warm-up (empty, or as loaded).
        self.recycling.matrix.rows = self._initial.clone()

    def finish(self, results: list[GenerationResult]) -> None:
        if self.matrix_file is not None:
            self.recycling.matrix.save(self.matrix_file)
