"""Token trees: one verification path for every tree-drafting method.

A :class:`TreeProposer` grows a tree after the committed sequence, the execution core
(:mod:`specbench.decoding.core`) has the target score it in one tree-attention call, and the
target's own samples walk it (:func:`walk_tree`), which is exact for any tree built without
looking at the target's samples of this step. Proposers hear the outcome (and the target's
logits) through ``observe_row``, which is how Token Recycling and Lookahead learn from
target calls.

SpecExec (Svirschevski et al., 2024): the draft grows a tree best-first by cumulative
probability: at each round the ``beam`` most probable candidates join the tree and the draft
scores them all in one tree-attention call, which proposes their ``branching`` most likely
children as new candidates, until ``budget`` nodes (or ``max_depth`` levels) are in. The target
then scores the whole tree in one call and walks it from the root drawing *its own* sample at
each node: while the sample is a child of the current node the walk descends; the first sample
that is not becomes the step's last token. Every emitted token is a sample of the target given
the path above it, so the output follows the target's distribution exactly whatever the tree
(and is greedy at temperature 0).
"""

from __future__ import annotations

import heapq
import math
from abc import abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch

from specbench.decoding.proposers import Draft, RowProposer, Sessions, Slot
from specbench.decoding.sampling import SamplingParams, logits_to_probs, sample
from specbench.decoding.types import GenerationRequest
from specbench.models.base import LanguageModel, Session


@dataclass
class TokenTree:
    """Nodes in insertion order: ``parents[i]`` is a node index or ``-1`` for the root."""

    parents: list[int] = field(default_factory=list)
    tokens: list[int] = field(default_factory=list)
    depths: list[int] = field(default_factory=list)
    candidates: int = 0  # children the draft proposed, in the tree or pruned
    rounds: int = 0

    def __len__(self) -> int:
        return len(self.tokens)

    @classmethod
    def chain(cls, tokens: Sequence[int]) -> TokenTree:
        """A chain as a tree: node ``i`` is the child of node ``i - 1``."""
        tree = cls()
        for depth, token in enumerate(tokens, start=1):
            tree.add(depth - 2, token, depth)
        return tree

    def add(self, parent: int, token: int, depth: int) -> int:
        self.parents.append(parent)
        self.tokens.append(token)
        self.depths.append(depth)
        return len(self.tokens) - 1

    def children(self) -> dict[int, dict[int, int]]:
        """For each node (``-1``: root), its children by token."""
        out: dict[int, dict[int, int]] = {}
        for node, (parent, token) in enumerate(zip(self.parents, self.tokens, strict=True)):
            out.setdefault(parent, {})[token] = node
        return out

    def widest_level(self) -> int:
        return max((self.depths.count(d) for d in set(self.depths)), default=0)

    def add_path(self, tokens: list[int], parent: int = -1) -> list[int]:
        """Add a chain below ``parent``, sharing nodes the tree already has (a trie), and
        return the chain's node indices. Sibling tokens stay unique, which the walk needs."""
        children = self.children()
        depth = 0 if parent == -1 else self.depths[parent]
        nodes = []
        for token in tokens:
            depth += 1
            existing = children.get(parent, {}).get(token)
            if existing is None:
                existing = self.add(parent, token, depth)
                children.setdefault(parent, {})[token] = existing
            nodes.append(existing)
            parent = existing
        return nodes


@dataclass
class Candidate:
    """A node a tree proposer may keep: its cumulative draft log-probability, depth, parent
    (an index into the same candidate list, ``-1``: the root) and token."""

    score: float
    depth: int
    parent: int
    token: int


def best_subtree(tree: TokenTree, pool: Sequence[Candidate], budget: int) -> None:
    """Add the ``budget`` candidates of highest score to ``tree``, parents first. A child
    never outscores its parent and ties go to the shallower, so the kept set is a tree (the
    reranking of EAGLE-2 and of Medusa's candidate trees)."""
    ranked = sorted(range(len(pool)), key=lambda i: (-pool[i].score, pool[i].depth))
    node_of: dict[int, int] = {}
    for i in sorted(ranked[:budget], key=lambda i: (pool[i].depth, i)):
        candidate = pool[i]
        parent = -1 if candidate.parent == -1 else node_of[candidate.parent]
        node_of[i] = tree.add(parent, candidate.token, candidate.depth)
    tree.candidates = len(pool)


class TreeProposer(RowProposer):
    """A proposer of token trees, one per row (the base of every tree method).

    Subclasses implement :meth:`grow`; ``observe_row`` hears each step's
    :class:`~specbench.decoding.proposers.Outcome`: the sequence before it, the tree, the
    target's raw logits for the root (row 0) and every node (row ``1 + i``), the path the
    target's samples took and the token after it. ``calls`` counts draft-model calls (0
    for draft-free proposers).
    """

    drafts_trees = True
    #: Deepest tree level it grows (the core also stops at the token budget).
    max_depth: int = 1024

    def propose_row(self, slot: Slot) -> Draft:
        return self.grow(slot.row, slot.sequence, min(self.max_depth, slot.budget))

    @abstractmethod
    def grow(self, row: int, sequence: list[int], max_depth: int) -> TokenTree:
        """A tree of at most ``max_depth`` levels after ``sequence`` for ``row``."""


class TreeDrafter(TreeProposer):
    """Grows draft trees best-first by cumulative draft probability (see module docstring)."""

    def __init__(
        self,
        model: LanguageModel,
        budget: int,
        max_depth: int,
        branching: int,
        beam: int,
        temperature: float,
    ) -> None:
        super().__init__()
        self.model = model
        self.budget = budget
        self.max_depth = max_depth
        self.branching = branching
        self.beam = beam
        self.sampling = SamplingParams(temperature=temperature)
        self._sessions: list[Session] = []

    def start(self, requests: Sequence[GenerationRequest], sessions: Sessions) -> None:
        super().start(requests, sessions)
        positions = max(len(r.prompt_ids) + r.max_new_tokens for r in requests) + self.budget
        self._sessions = [sessions.session(self.model, positions) for _ in requests]

    def grow(self, row: int, sequence: list[int], max_depth: int) -> TokenTree:
        """A tree of at most ``budget`` nodes and ``max_depth`` levels after ``sequence``."""
        if not self._sessions:
            raise RuntimeError("TreeDrafter.grow called before start()")
        session = self._sessions[row]
        tree = TokenTree()
        if max_depth <= 0 or self.budget <= 0:
            return tree
        root = session.logits_from(sequence, len(sequence) - 1)[-1:]
        self.calls[row] += 1
        heap: list[
            tuple[float, int, int, int, int]
        ] = []  # (-log q, tiebreak, parent, token, depth)
        counter = self._push_children(heap, root, [-1], {-1: 0.0}, [1], 0, tree)
        log_q = {-1: 0.0}
        while heap and len(tree) < self.budget:
            added: list[int] = []
            while heap and len(added) < min(self.beam, self.budget - len(tree)):
                neg_log_q, _, parent, token, depth = heapq.heappop(heap)
                node = tree.add(parent, token, depth)
                log_q[node] = -neg_log_q
                added.append(node)
            tree.rounds += 1
            expandable = [n for n in added if tree.depths[n] < max_depth]
            if not expandable or len(tree) >= self.budget:
                continue
            logits = session.tree_extend(
                [tree.parents[n] for n in added], [tree.tokens[n] for n in added]
            )
            self.calls[row] += 1
            kept = [i for i, node in enumerate(added) if tree.depths[node] < max_depth]
            counter = self._push_children(
                heap,
                logits[kept],
                [added[i] for i in kept],
                log_q,
                [tree.depths[added[i]] + 1 for i in kept],
                counter,
                tree,
            )
        return tree

    def _push_children(
        self,
        heap: list[tuple[float, int, int, int, int]],
        logits: torch.Tensor,
        parents: list[int],
        log_q: dict[int, float],
        depths: list[int],
        counter: int,
        tree: TokenTree,
    ) -> int:
        """Push the ``branching`` most likely children of each parent (one row of logits each)."""
        probs = logits_to_probs(logits, self.sampling)
        top = torch.topk(probs, min(self.branching, probs.shape[-1]), dim=-1)
        for parent, depth, values, tokens in zip(
            parents, depths, top.values.tolist(), top.indices.tolist(), strict=True
        ):
            for p, token in zip(values, tokens, strict=True):
                if p <= 0:
                    continue
                heapq.heappush(
                    heap, (-(log_q[parent] + math.log(p)), counter, parent, token, depth)
                )
                counter += 1
                tree.candidates += 1
        return counter


def walk_tree(
    tree: TokenTree, probs: torch.Tensor, generator: torch.Generator | None
) -> tuple[list[int], int, int]:
    """The target's walk down the tree: ``(path, next token, levels verified)``.

    ``probs`` row 0 is the target's distribution at the root, row ``1 + i`` at node ``i``.
    """
    return walk_tree_with(tree, lambda row: int(sample(probs[row], generator)))


def walk_tree_with(tree: TokenTree, choose: Callable[[int], int]) -> tuple[list[int], int, int]:
    """The walk of :func:`walk_tree` with ``choose(row)`` giving the target's token at a row
    (row 0: the root, ``1 + i``: node ``i``): its sample, its argmax, or a saved token."""
    children = tree.children()
    node, verified = -1, 0
    path: list[int] = []
    while True:
        token = choose(node + 1)
        kids = children.get(node)
        if kids:
            verified += 1
        child = kids.get(token) if kids else None
        if child is None:
            return path, token, verified
        path.append(child)
        node = child
