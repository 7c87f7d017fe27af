"""Token Recycling (Luo et al., ACL 2025): draft trees from the target's own past top-k.

An adjacency matrix holds, for every token id, the ``top_k`` tokens the target most recently
ranked highest right after it. Every target call refreshes the rows of the tokens it scored
(the committed token and every tree node), so the candidates are *recycled* target output and
no draft model runs. Each step builds a static tree by breadth-first expansion from the last
committed token: ``branching[d]`` children per node at depth ``d + 1``, each child the next
entry of its parent's row, up to ``max_nodes``. The matrix persists across the prompts of a
run and can be saved to and loaded from a file.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch

from specbench.decoding.proposers import Outcome, Sessions
from specbench.decoding.tree import TokenTree, TreeProposer
from specbench.decoding.types import GenerationRequest

UNKNOWN = -1


class AdjacencyMatrix:
    """``rows[t]``: the target's latest top-k successors of token ``t`` (``-1``: unknown)."""

    def __init__(self, vocab_size: int, top_k: int) -> None:
        self.rows = torch.full((vocab_size, top_k), UNKNOWN, dtype=torch.int32)

    @property
    def top_k(self) -> int:
        return int(self.rows.shape[1])

    def update(self, tokens: Sequence[int], logits: torch.Tensor) -> None:
        """Row ``tokens[i]`` becomes the top-k of ``logits[i]`` (later rows win on repeats)."""
        if not tokens:
            return
        top = torch.topk(logits.float(), self.top_k, dim=-1).indices.to(torch.int32)
        self.rows[torch.tensor(list(tokens), dtype=torch.long)] = top.cpu()

    def coverage(self) -> float:
        """Share of token ids whose row has been filled at least once."""
        return float((self.rows[:, 0] != UNKNOWN).float().mean())

    def save(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(path.suffix + ".partial")
        torch.save({"rows": self.rows}, tmp)
        tmp.replace(path)

    def load(self, path: Path) -> None:
        rows = torch.load(path, map_location="cpu")["rows"]
        if tuple(rows.shape) != tuple(self.rows.shape):
            raise ValueError(
                f"{path} holds a {tuple(rows.shape)} matrix, "
                f"this run needs {tuple(self.rows.shape)}"
            )
        self.rows = rows.to(torch.int32)


class RecyclingProposer(TreeProposer):
    """Builds Token Recycling's static BFS tree from the adjacency matrix (shared by the rows
    and the prompts of a run); learns from every target call through :meth:`observe_row`."""

    def __init__(
        self, vocab_size: int, top_k: int, branching: Sequence[int], max_nodes: int
    ) -> None:
        super().__init__()
        self.matrix = AdjacencyMatrix(vocab_size, top_k)
        self.branching = list(branching)
        self.max_nodes = max_nodes
        self.max_depth = len(self.branching)
        self._sizes: list[list[int]] = []

    def start(self, requests: Sequence[GenerationRequest], sessions: Sessions) -> None:
        super().start(requests, sessions)
        self._sizes = [[] for _ in requests]

    def grow(self, row: int, sequence: list[int], max_depth: int) -> TokenTree:
        tree = TokenTree()
        frontier = [(-1, sequence[-1])]
        for depth, width in enumerate(self.branching[:max_depth], start=1):
            following = []
            for parent, token in frontier:
                successors = [t for t in self.matrix.rows[token, :width].tolist() if t != UNKNOWN]
                for successor in successors:
                    if len(tree) >= self.max_nodes:
                        break
                    following.append((tree.add(parent, successor, depth), successor))
            frontier = following
            if not frontier:
                break
        self._sizes[row].append(len(tree))
        return tree

    def observe_row(self, outcome: Outcome) -> None:
        assert outcome.logits is not None
        # Row 0 scored the last committed token, row 1 + i tree node i.
        self.matrix.update([outcome.sequence[-1], *outcome.draft.tokens], outcome.logits)

    def stats(self, row: int) -> dict[str, float]:
        sizes = self._sizes[row]
        return {
            "recycling_tree_size": sum(sizes) / max(len(sizes), 1),
            "recycling_matrix_coverage": self.matrix.coverage(),
        }
