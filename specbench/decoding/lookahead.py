"""Lookahead decoding (Fu et al., ICML 2024): Jacobi iterations feed an n-gram pool.

Each step's one target call scores two branches of one token tree (tree attention):

* the *lookahead branch*: a window of ``window`` guessed future tokens as a chain below the
  last committed token. The target's argmax at every position of the chain is the next Jacobi
  iterate (each guess re-predicted given the guesses before it);
* the *verification branch*: up to ``pool_size`` n-grams from the pool that start with the last
  committed token, each ``ngram - 1`` tokens long, merged into a trie.

The pool is collected from the trajectories of the last ``ngram`` iterates, as in the
paper's 2-D window: the token at position p of iterate t, at p + 1 of iterate t + 1, ...,
form an n-gram (each was predicted given the one before it). After a step the window shifts
by the number of committed tokens. The target's own samples walk the whole tree, so the
method is exact at any temperature; at temperature 0 it is greedy decoding, and at
temperature > 0 the argmax guesses and n-grams are just less likely to be sampled, so it
reduces to drafting from the pool with lower acceptance.

Our lookahead branch is the current iterate as one chain rather than the paper's stacked
levels (the older levels come from the stored iterates instead of being recomputed), which
keeps it a tree that the shared tree attention scores.
"""

from __future__ import annotations

from collections import OrderedDict, deque
from collections.abc import Sequence
from dataclasses import dataclass, field

from specbench.decoding.proposers import Outcome, Sessions
from specbench.decoding.tree import TokenTree, TreeProposer
from specbench.decoding.types import GenerationRequest


class NgramPool:
    """For each first token, the latest ``capacity`` distinct continuations (LRU)."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.table: dict[int, OrderedDict[tuple[int, ...], None]] = {}

    def add(self, ngram: tuple[int, ...]) -> None:
        key, rest = ngram[0], ngram[1:]
        entries = self.table.setdefault(key, OrderedDict())
        entries.pop(rest, None)
        entries[rest] = None
        while len(entries) > self.capacity:
            entries.popitem(last=False)

    def lookup(self, key: int) -> list[tuple[int, ...]]:
        """Newest first."""
        return list(reversed(self.table.get(key, {})))

    def __len__(self) -> int:
        return sum(len(v) for v in self.table.values())


class LookaheadProposer(TreeProposer):
    """See the module docstring. ``window`` W, ``ngram`` N, ``pool_size`` G."""

    def __init__(self, window: int, ngram: int, pool_size: int) -> None:
        super().__init__()
        self.window = window
        self.ngram = ngram
        self.pool_size = pool_size
        self.max_depth = max(window, ngram - 1)
        self._rows: list[_RowState] = []

    def start(self, requests: Sequence[GenerationRequest], sessions: Sessions) -> None:
        super().start(requests, sessions)
        self._rows = []
        for request in requests:
            prompt = list(request.prompt_ids)
            # First guesses: the prompt's last tokens, as the paper seeds the window from it.
            guess = [prompt[(i - self.window) % len(prompt)] for i in range(self.window)]
            self._rows.append(_RowState(NgramPool(self.pool_size), guess, deque(maxlen=self.ngram)))

    def grow(self, row: int, sequence: list[int], max_depth: int) -> TokenTree:
        state = self._rows[row]
        tree = TokenTree()
        state.steps += 1
        state.chain = []
        if max_depth <= 0:
            return tree
        candidates = state.pool.lookup(sequence[-1])[: self.pool_size]
        state.hits += bool(candidates)
        state.candidates += len(candidates)
        for continuation in candidates:
            tree.add_path(list(continuation[:max_depth]))
        state.chain = tree.add_path(state.guess[:max_depth])
        return tree

    def observe_row(self, outcome: Outcome) -> None:
        state = self._rows[outcome.row]
        tree = outcome.draft
        assert isinstance(tree, TokenTree) and outcome.logits is not None
        sequence = outcome.sequence
        # The next iterate: the argmax after the last committed token and after each guess.
        rows = [0] + [1 + node for node in state.chain]
        iterate = outcome.logits[rows].argmax(dim=-1).tolist()
        position = len(sequence)  # absolute position of iterate[0]
        state.iterates.append((position, iterate))
        self._collect(state)
        committed = len(outcome.path) + 1
        following = iterate[committed:]
        tail = sequence + [tree.tokens[i] for i in outcome.path] + [outcome.token]
        while len(following) < self.window:  # refill from the text, as at the start
            following.append(tail[-(self.window - len(following))])
        state.guess = following[: self.window]

    def _collect(self, state: _RowState) -> None:
        """Add the diagonals through the stored iterates (one per start position)."""
        if len(state.iterates) < self.ngram:
            return
        iterates = list(state.iterates)
        first_position, first = iterates[0]
        for offset in range(len(first)):
            ngram = []
            for level, (start, tokens) in enumerate(iterates):
                index = first_position + offset + level - start
                if not 0 <= index < len(tokens):
                    break
                ngram.append(tokens[index])
            if len(ngram) == self.ngram:
                state.pool.add(tuple(ngram))

    def stats(self, row: int) -> dict[str, float]:
        state = self._rows[row]
        steps = max(state.steps, 1)
        return {
            "lookahead_pool_size": float(len(state.pool)),
            "lookahead_hit_rate": state.hits / steps,
            "lookahead_candidates": state.candidates / steps,
        }


@dataclass
class _RowState:
    """One row's n-gram pool, Jacobi window and recent iterates."""

    pool: NgramPool
    guess: list[int]
    iterates: deque[tuple[int, list[int]]]
    chain: list[int] = field(default_factory=list)
    steps: int = 0
    hits: int = 0
    candidates: int = 0
