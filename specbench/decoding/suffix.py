"""Suffix Decoding (Oliaro et al., NeurIPS 2025): draft trees from suffix tries of earlier text.

Two tries of token windows (every suffix of a sequence, cut at ``max_depth`` tokens, with how
often each path occurred):

* a *per-request* trie over the prompt and the output so far, grown as tokens are committed;
* a *global* trie over earlier outputs of the run (across requests), bounded to the latest
  ``max_cached_requests`` outputs (the oldest is removed when a new one comes in).

Each step matches the longest suffix of the sequence (at most ``max_match`` tokens, so at
least ``max_depth - max_match`` levels remain below the match to speculate) in each trie and
expands a candidate tree below the match best-first by estimated probability (a child's count
over its parent's), keeping nodes whose probability is at least
``min_token_prob``, up to ``max_spec_factor * match_length + max_spec_offset`` nodes (and the
step's budget). The candidate with the larger expected number of accepted tokens (the sum of
its nodes' probabilities) is the step's tree; the shared tree walk verifies it exactly.

This is our own implementation: the ``arctic-inference`` package (vLLM's ``suffix`` method)
ships only a source distribution that needs a C++ build, and pulls GPU-serving code a
benchmark harness should not depend on to draft from a trie.
"""

from __future__ import annotations

import heapq
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field

from specbench.decoding.proposers import Sessions
from specbench.decoding.tree import TokenTree, TreeProposer
from specbench.decoding.types import GenerationRequest, GenerationResult


@dataclass
class _Node:
    count: int = 0
    children: dict[int, _Node] = field(default_factory=dict)


class SuffixTrie:
    """Counts of every token window (suffix cut at ``max_depth``) of the sequences added."""

    def __init__(self, max_depth: int) -> None:
        self.max_depth = max_depth
        self.root = _Node()
        self.nodes = 0

    def add_sequence(self, tokens: Sequence[int], sign: int = 1) -> None:
        """Insert (or, with ``sign = -1``, remove) every window of ``tokens``."""
        for start in range(len(tokens)):
            self._add_window(tokens[start : start + self.max_depth], sign)

    def _add_window(self, window: Sequence[int], sign: int) -> None:
        node = self.root
        for token in window:
            child = node.children.get(token)
            if child is None:
                if sign < 0:
                    return
                child = node.children[token] = _Node()
                self.nodes += 1
            child.count += sign
            if child.count <= 0:
                self.nodes -= _size(child)
                del node.children[token]
                return
            node = child

    def match(self, sequence: Sequence[int], max_match: int) -> tuple[_Node | None, int]:
        """The node of the longest suffix of ``sequence`` (at most ``max_match`` tokens, and
        fewer than ``max_depth`` so something can follow) with a continuation in the trie,
        and that suffix's length."""
        longest = min(len(sequence), max_match, self.max_depth - 1)
        for length in range(longest, 0, -1):
            node: _Node | None = self.root
            for token in sequence[len(sequence) - length :]:
                node = node.children.get(token) if node is not None else None
                if node is None:
                    break
            if node is not None and node.children:
                return node, length
        return None, 0


def _size(node: _Node) -> int:
    return 1 + sum(_size(child) for child in node.children.values())


class IncrementalSuffixTrie(SuffixTrie):
    """A per-request trie that grows one token at a time: each new token extends every
    window that ends at the previous token (kept as a list of open nodes)."""

    def __init__(self, max_depth: int) -> None:
        super().__init__(max_depth)
        self._open: deque[tuple[_Node, int]] = deque()  # (node, its depth)

    def extend(self, tokens: Sequence[int]) -> None:
        for token in tokens:
            grown: deque[tuple[_Node, int]] = deque()
            for node, depth in [(self.root, 0), *self._open]:
                if depth >= self.max_depth:
                    continue
                child = node.children.get(token)
                if child is None:
                    child = node.children[token] = _Node()
                    self.nodes += 1
                child.count += 1
                grown.append((child, depth + 1))
            self._open = grown


@dataclass
class SuffixCandidate:
    """A speculation tree below a matched node, as root-down token paths with probabilities."""

    paths: list[tuple[list[int], float]]
    match_length: int
    source: str

    @property
    def score(self) -> float:
        """Expected accepted tokens if each node is kept with its estimated probability."""
        return sum(probability for _, probability in self.paths)


def speculate(
    node: _Node,
    match_length: int,
    source: str,
    max_nodes: int,
    min_token_prob: float,
) -> SuffixCandidate:
    """Best-first expansion below ``node`` by probability = product of count ratios."""
    paths: list[tuple[list[int], float]] = []
    heap: list[tuple[float, int, list[int], _Node, int]] = []
    tiebreak = 0

    def push_children(parent: _Node, prefix: list[int], probability: float) -> None:
        nonlocal tiebreak
        total = sum(child.count for child in parent.children.values())
        for token, child in parent.children.items():
            p = probability * child.count / total
            if p >= min_token_prob:
                heapq.heappush(heap, (-p, tiebreak, [*prefix, token], child, 0))
                tiebreak += 1

    push_children(node, [], 1.0)
    while heap and len(paths) < max_nodes:
        negative, _, tokens, child, _ = heapq.heappop(heap)
        paths.append((tokens, -negative))
        push_children(child, tokens, -negative)
    return SuffixCandidate(paths, match_length, source)


class SuffixProposer(TreeProposer):
    """Suffix Decoding's proposer (see the module docstring); the global trie persists across
    requests of a run, each row's per-request trie is rebuilt for each generation."""

    def __init__(
        self,
        max_depth: int = 24,
        max_match: int = 12,
        max_spec_factor: float = 1.0,
        max_spec_offset: float = 0.0,
        min_token_prob: float = 0.1,
        max_spec_tokens: int = 32,
        max_cached_requests: int = 256,
        use_global: bool = True,
    ) -> None:
        super().__init__()
        self.max_depth = max_depth
        self.max_match = max_match
        self.max_spec_factor = max_spec_factor
        self.max_spec_offset = max_spec_offset
        self.min_token_prob = min_token_prob
        self.max_spec_tokens = max_spec_tokens
        self.max_cached_requests = max_cached_requests
        self.use_global = use_global
        self.global_trie = SuffixTrie(max_depth)
        self._cached_outputs: deque[list[int]] = deque()
        self._rows: list[_RowState] = []

    def start(self, requests: Sequence[GenerationRequest], sessions: Sessions) -> None:
        super().start(requests, sessions)
        self._rows = [_RowState(IncrementalSuffixTrie(self.max_depth)) for _ in requests]

    def grow(self, row: int, sequence: list[int], max_depth: int) -> TokenTree:
        state = self._rows[row]
        # The per-request trie covers the sequence up to its last token (the match itself
        # must be followed by something, so the newest window never matches itself).
        state.local.extend(sequence[state.seen :])
        state.seen = len(sequence)
        state.steps += 1
        tree = TokenTree()
        if max_depth <= 0:
            return tree
        best = self._best_candidate(state.local, sequence)
        if best is None:
            return tree
        state.matched_steps += 1
        state.match_total += best.match_length
        state.global_hits += best.source == "global"
        for tokens, _ in best.paths:
            if len(tokens) <= max_depth:
                tree.add_path(tokens)
        state.tree_total += len(tree)
        return tree

    def _best_candidate(self, local: SuffixTrie, sequence: list[int]) -> SuffixCandidate | None:
        candidates = []
        tries: list[tuple[str, SuffixTrie]] = [("request", local)]
        if self.use_global:
            tries.append(("global", self.global_trie))
        for source, trie in tries:
            node, length = trie.match(sequence, self.max_match)
            if node is None:
                continue
            limit = self.max_spec_factor * length + self.max_spec_offset
            limit = min(self.max_spec_tokens, int(limit))
            if limit <= 0:
                continue
            candidate = speculate(node, length, source, limit, self.min_token_prob)
            if candidate.paths:
                candidates.append(candidate)
        return max(candidates, key=lambda c: c.score, default=None)

    def clear_global(self) -> None:
        """Forget every earlier output (after a warm-up)."""
        self.global_trie = SuffixTrie(self.max_depth)
        self._cached_outputs.clear()

    def finish(self, results: Sequence[GenerationResult]) -> None:
        for result in results:
            self.remember(result.tokens)

    def remember(self, output: Sequence[int]) -> None:
        """Add a finished request's output to the global trie (evicting the oldest)."""
        if not self.use_global or not output:
            return
        self._cached_outputs.append(list(output))
        self.global_trie.add_sequence(output)
        while len(self._cached_outputs) > self.max_cached_requests:
            self.global_trie.add_sequence(self._cached_outputs.popleft(), sign=-1)

    def stats(self, row: int) -> dict[str, float]:
        state = self._rows[row]
        steps = max(state.steps, 1)
        matched = max(state.matched_steps, 1)
        return {
            "suffix_match_rate": state.matched_steps / steps,
            "suffix_match_length": state.match_total / matched,
            "suffix_tree_size": state.tree_total / matched,
            "suffix_global_hit_rate": state.global_hits / steps,
            "suffix_global_nodes": float(self.global_trie.nodes),
        }


@dataclass
class _RowState:
    """One row's per-request trie and counters."""

    local: IncrementalSuffixTrie
    seen: int = 0
    steps: int = 0
    global_hits: int = 0
    matched_steps: int = 0
    match_total: int = 0
    tree_total: int = 0
