"""The model interface decoding methods work against.

A :class:`LanguageModel` hands out :class:`Session` objects. A session caches what it has
processed (for a transformer, its KV cache) and is told which token sequence it should now
extend; it keeps the longest prefix it already has and processes only the rest. Rolling back
after a rejected draft is therefore implicit: ask for logits of the accepted sequence and the
session truncates its cache to the common prefix. No step re-encodes what is already cached.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch

from specbench.errors import PluginError
from specbench.models import ledger


class Tokenizer(Protocol):
    """The little a method or the runner needs from a tokenizer."""

    @property
    def eos_token_ids(self) -> frozenset[int]:
        """Token ids that end a generation."""
        ...

    def encode(self, text: str) -> list[int]:
        """Plain text to ids (with the special tokens the tokenizer adds by default)."""
        ...

    def decode(self, ids: Sequence[int]) -> str:
        """Ids to text, special tokens skipped."""
        ...

    def chat_ids(self, messages: list[dict[str, str]]) -> list[int] | None:
        """Ids of ``messages`` through the chat template, ready for the assistant's turn;
        ``None`` when the tokenizer has no chat template."""
        ...

    def get_vocab(self) -> dict[str, int]:
        """Token to id, for compatibility checks between a target and a draft."""
        ...

    def special_tokens(self) -> dict[str, str | None]:
        """Role (bos, eos, pad, unk) to token text."""
        ...


@dataclass
class ModelCounters:
    """What a model has done since it was loaded: forward calls and tokens processed."""

    forward_calls: int = 0
    tokens_processed: int = 0

    def reset(self) -> None:
        self.forward_calls = 0
        self.tokens_processed = 0


class LanguageModel(ABC):
    """A causal language model that decodes through sessions.

    ``vocab_size`` is the number of logits every call returns. Target and draft of a pair
    must return the same number; the loader trims padded embedding rows to the shared size.
    """

    name: str
    vocab_size: int
    tokenizer: Tokenizer
    device: torch.device

    def __init__(self) -> None:
        self.counters = ModelCounters()
        #: Backends that simulate what a call costs (toy models) skip the wait when False;
        #: the audit, which times nothing, turns it off.
        self.simulate_costs = True
        #: Let a fresh session start from a stored copy of a prompt's cache instead of
        #: processing the prompt again (backends that support it). Never on in timed runs:
        #: it would hide the prefill. The sampling audit, which draws thousands of short
        #: generations from one prompt, turns it on.
        self.reuse_prompt_cache = False

    @abstractmethod
    def new_session(self) -> Session:
        """A fresh, empty cache for one sequence."""

    def restrict_vocab(self, size: int) -> None:
        """Return logits for the first ``size`` ids only (the vocabulary shared with a draft)."""
        if size != self.vocab_size:
            raise ValueError(f"{self.name} cannot restrict its vocabulary to {size}")

    def shipped_kernels(self) -> AbstractContextManager[None]:
        """Inside the block the model runs the layers its library ships, without specbench's
        kernels (packed or row-stable layers, row-stable attention), so a reference row can
        time the library as its users run it. The default: nothing to swap."""
        return nullcontext()

    def synchronize(self) -> None:
        """Wait for queued device work, so wall-clock timings are honest."""
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def describe(self) -> dict[str, Any]:
        """What the run header records about this model."""
        return {"name": self.name, "vocab_size": self.vocab_size, "device": str(self.device)}

    def new_batch_session(self, size: int) -> BatchSession:
        """Caches for ``size`` sequences decoded together; backends that batch override it."""
        return SequentialBatchSession(self, size)

    def new_static_session(
        self,
        positions: int,
        max_len: int,
        graph_lengths: tuple[int, ...] = (),
        compile: bool = False,
    ) -> Session:
        """A session over a preallocated cache for a sequence of up to ``positions`` tokens
        (the ``static`` engine; CUDA graphs for calls of ``graph_lengths`` tokens). Backends
        without one refuse it."""
        raise PluginError(
            f"engine 'static' needs a backend with static caches (hf or dummy), not {self.name}",
            "use engine = 'eager' with this model",
        )


@dataclass
class ForwardOutput:
    """What one forward call returns for the positions asked for.

    ``hidden`` holds the last layer's hidden states of the same positions (the features a
    learned judge looks at), only when they were requested.
    """

    logits: torch.Tensor
    hidden: torch.Tensor | None = None


@dataclass
class Session(ABC):
    """One sequence's cache in one model.

    Subclasses implement :meth:`_append` (process tokens after the cached ones and return
    their next-token logits) and :meth:`_truncate` (drop cached positions from the end), and
    for token trees :meth:`_append_tree` and :meth:`_keep_tree_nodes`.

    A session may hold a *tree* of speculative tokens beyond ``cached`` (SpecExec): nodes are
    numbered in the order they were added, each with a parent node (``-1``: the last cached
    token) and a depth. Any ordinary call drops the tree first; :meth:`commit_tree_path`
    keeps one root-to-node path and drops the rest.
    """

    model: LanguageModel
    cached: list[int] = field(default_factory=list)
    tree: list[TreeNode] = field(default_factory=list)
    #: Whether forward calls enter the cost ledger (off for a batch session's inner rows).
    timed: bool = field(default=True, kw_only=True)

    @property
    def engine(self) -> str:
        """The kind of execution this cache's forwards run on, for the cost ledger (unit costs
        are probed per kind): ``"eager"`` here; static caches say which of theirs."""
        return "eager"

    def logits_from(self, tokens: Sequence[int], start: int) -> torch.Tensor:
        """Next-token logits for positions ``start .. len(tokens) - 1`` of ``tokens``.

        Row ``i`` is the model's distribution for the token that follows
        ``tokens[: start + i + 1]``. Returns a float tensor of shape
        ``[len(tokens) - start, vocab_size]``. Cached positions that still agree with
        ``tokens`` are reused; positions from the first disagreement on are dropped.
        """
        return self.forward_from(tokens, start).logits

    def forward_from(
        self, tokens: Sequence[int], start: int, hidden: bool = False
    ) -> ForwardOutput:
        """Like :meth:`logits_from`, optionally with the hidden states of the same rows."""
        if not 0 <= start < len(tokens):
            raise ValueError(f"start={start} outside a sequence of {len(tokens)} tokens")
        if not self.cached and not self.tree and self.model.reuse_prompt_cache and start > 0:
            self._adopt_prompt_cache(list(tokens[:start]))
        new = self._sync(tokens, start)
        with self._timed_forward(len(new)):
            output = self._append(new, len(tokens) - start, hidden)
        self.cached.extend(new)
        self._count(len(new))
        return output

    def tree_forward(
        self, sequence: Sequence[int], parents: Sequence[int], tokens: Sequence[int]
    ) -> torch.Tensor:
        """Score ``sequence``'s next token and a token tree hanging from it, in one call.

        Row 0 is the distribution after ``sequence``; row ``1 + i`` the distribution after
        the path to node ``i`` (``parents[i]`` is an earlier node, or ``-1`` for the root).
        """
        if not sequence:
            raise ValueError("a tree needs a sequence to hang from")
        chain = self._sync(sequence, len(sequence) - 1)
        depths = self._depths(parents)
        with self._timed_forward(len(chain) + len(tokens)):
            logits = self._append_tree(chain, list(parents), list(tokens), depths)
        self.cached.extend(chain)
        self.tree = [TreeNode(p, t, d) for p, t, d in zip(parents, tokens, depths, strict=True)]
        self._count(len(chain) + len(tokens))
        return logits

    def tree_extend(self, parents: Sequence[int], tokens: Sequence[int]) -> torch.Tensor:
        """Add nodes to the current tree (parents index all nodes so far, ``-1`` the root) and
        return their logits, ``[len(tokens), vocab_size]``."""
        offset = len(self.tree)
        depths = self._depths(parents, offset)
        with self._timed_forward(len(tokens)):
            logits = self._append_tree([], list(parents), list(tokens), depths)
        self.tree += [TreeNode(p, t, d) for p, t, d in zip(parents, tokens, depths, strict=True)]
        self._count(len(tokens))
        return logits

    def commit_tree_path(self, path: Sequence[int]) -> None:
        """Keep the nodes of ``path`` (root-down node indices) as cached tokens, drop the rest."""
        self._keep_tree_nodes(list(path))
        self.cached.extend(self.tree[i].token for i in path)
        self.tree = []

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release what the session holds (a static cache goes back to its model's pool)."""

    def _sync(self, tokens: Sequence[int], start: int) -> list[int]:
        """Drop any tree and the cache beyond the shared prefix; return the tokens to feed."""
        if self.tree:
            self._keep_tree_nodes([])
            self.tree = []
        keep = min(common_prefix(self.cached, tokens), start)
        if keep < len(self.cached):
            self._truncate(keep)
            del self.cached[keep:]
        return list(tokens[keep:])

    def _depths(self, parents: Sequence[int], offset: int = 0) -> list[int]:
        depths: list[int] = []
        for i, parent in enumerate(parents):
            if not -1 <= parent < offset + i:
                raise ValueError(f"node {offset + i} has parent {parent}: not an earlier node")
            if parent == -1:
                depths.append(1)
            elif parent < offset:
                depths.append(self.tree[parent].depth + 1)
            else:
                depths.append(depths[parent - offset] + 1)
        return depths

    def _timed_forward(self, rows: int) -> AbstractContextManager[None]:
        """The cost ledger's forward phase for this call (see :mod:`specbench.models.ledger`);
        sessions that serve a batch session's rows leave the timing to it."""
        return ledger.forward(self.model, rows, self.engine) if self.timed else nullcontext()

    def _count(self, tokens: int) -> None:
        counters = self.model.counters
        counters.forward_calls += 1
        counters.tokens_processed += tokens

    def _all_nodes(self, parents: list[int], tokens: list[int]) -> tuple[list[int], list[int]]:
        """Parents and tokens of the nodes already in the tree followed by new ones."""
        return [n.parent for n in self.tree] + parents, [n.token for n in self.tree] + tokens

    def _tree_layout(
        self, chain: list[int], parents: list[int], tokens: list[int], depths: list[int]
    ) -> tuple[torch.Tensor, list[int]]:
        """For one call that scores ``chain`` and then the tree nodes ``tokens``: which slots
        from the first uncached one on (earlier tree nodes, the chain, the new nodes) each new
        row sees, ``[rows, len(self.tree) + rows]`` (every row also sees the whole cache), and
        the rows' positions. Chain row ``r`` sees chain rows ``0 .. r``; node ``i`` sees the
        whole chain and the nodes on its own path, itself included. A chain comes only with a
        fresh tree (any ordinary call drops the tree first)."""
        offset = len(self.tree)
        width = len(chain)
        rows = width + len(tokens)
        all_parents, _ = self._all_nodes(parents, tokens)
        visible = torch.zeros(rows, offset + rows, dtype=torch.bool)
        visible[:width, :width] = torch.ones(width, width, dtype=torch.bool).tril()
        visible[width:, :width] = True
        for i in range(len(tokens)):
            visible[width + i, [width + a for a in ancestors(offset + i, all_parents)]] = True
        committed = len(self.cached) + width  # slot of tree node n: committed + n
        positions = [len(self.cached) + r for r in range(width)]
        positions += [committed - 1 + depth for depth in depths]
        return visible, positions

    def _adopt_prompt_cache(self, prefix: list[int]) -> None:  # noqa: B027 - optional hook
        """Start from a stored cache of ``prefix`` (``reuse_prompt_cache``); by default the
        backend has none and the prefix is processed as usual."""

    @abstractmethod
    def _append(self, tokens: list[int], n_logits: int, hidden: bool) -> ForwardOutput:
        """Process ``tokens`` after the cache; return the logits of the last ``n_logits``
        positions, shape ``[n_logits, vocab_size]`` (float32), and their hidden states
        (``[n_logits, hidden_size]``) when ``hidden`` is set. Skipping the other positions
        matters: the output projection of a long prompt is a large share of a prefill."""

    @abstractmethod
    def _truncate(self, length: int) -> None:
        """Keep only the first ``length`` cached positions."""

    def _append_tree(
        self, chain: list[int], parents: list[int], tokens: list[int], depths: list[int]
    ) -> torch.Tensor:
        """Process ``chain`` (ordinary tokens after the cache) and then tree nodes; return the
        logits of the chain's last token (when ``chain`` is not empty) and of every node."""
        raise NotImplementedError(f"{type(self).__name__} does not support token trees")

    def _keep_tree_nodes(self, nodes: list[int]) -> None:
        """Keep only these tree nodes' cache entries, in this order, after the cached prefix."""
        raise NotImplementedError(f"{type(self).__name__} does not support token trees")


@dataclass(frozen=True)
class TreeNode:
    """A speculative token in a session's tree."""

    parent: int
    token: int
    depth: int


def tree_path(node: int, parents: Sequence[int], tokens: Sequence[int]) -> list[int]:
    """Tokens from the root down to ``node`` of a tree given by ``parents`` and ``tokens``."""
    path = []
    while node != -1:
        path.append(tokens[node])
        node = parents[node]
    return path[::-1]


def ancestors(node: int, parents: Sequence[int]) -> list[int]:
    """``node`` and every node above it, bottom-up."""
    chain = []
    while node != -1:
        chain.append(node)
        node = parents[node]
    return chain


def common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    """Length of the longest common prefix of two token sequences."""
    n = min(len(a), len(b))
    # Decoding calls this every forward with a cache that is almost always a prefix of the
    # new sequence: one slice comparison (in C) settles it; otherwise bisect on slices.
    if list(a[:n]) == list(b[:n]):
        return n
    low, high = 0, n  # a[:low] == b[:low], a[:high] != b[:high]
    while high - low > 1:
        middle = (low + high) // 2
        if list(a[low:middle]) == list(b[low:middle]):
            low = middle
        else:
            high = middle
    return low


class BatchSession(ABC):
    """Several sequences decoded together, each keeping its own cache and length.

    :meth:`forward_rows` is :meth:`Session.forward_from` for many rows in one forward call:
    each row keeps the longest cached prefix of its new sequence and processes the rest;
    rows given ``None`` sit this call out. Token trees (:meth:`tree_forward`) are scored a
    row at a time by backends whose batch is a list of sessions.
    """

    def __init__(self, model: LanguageModel, size: int) -> None:
        self.model = model
        self.size = size
        self.cached: list[list[int]] = [[] for _ in range(size)]

    @abstractmethod
    def forward_rows(
        self,
        sequences: Sequence[Sequence[int] | None],
        starts: Sequence[int],
        hidden: bool = False,
    ) -> list[ForwardOutput | None]:
        """Per row: logits (and last hidden states when ``hidden``) for positions
        ``starts[b] .. len(sequences[b]) - 1``."""

    def logits_rows(
        self, sequences: Sequence[Sequence[int] | None], starts: Sequence[int]
    ) -> list[torch.Tensor | None]:
        """Per row: logits for positions ``starts[b] .. len(sequences[b]) - 1``."""
        return [None if o is None else o.logits for o in self.forward_rows(sequences, starts)]

    def tree_forward(
        self, row: int, sequence: Sequence[int], parents: Sequence[int], tokens: Sequence[int]
    ) -> torch.Tensor:
        """:meth:`Session.tree_forward` for one row."""
        raise NotImplementedError(f"{type(self).__name__} does not score token trees")

    def commit_tree_path(self, row: int, path: Sequence[int]) -> None:
        """:meth:`Session.commit_tree_path` for one row."""
        raise NotImplementedError(f"{type(self).__name__} does not score token trees")


class SequentialBatchSession(BatchSession):
    """A batch served one row at a time through ordinary sessions (any backend, any engine,
    token trees included)."""

    def __init__(
        self, model: LanguageModel, size: int, sessions: Sequence[Session] | None = None
    ) -> None:
        super().__init__(model, size)
        self.sessions = (
            list(sessions) if sessions is not None else [model.new_session() for _ in range(size)]
        )
        if len(self.sessions) != size:
            raise ValueError(f"a batch of {size} rows needs {size} sessions")

    def forward_rows(
        self,
        sequences: Sequence[Sequence[int] | None],
        starts: Sequence[int],
        hidden: bool = False,
    ) -> list[ForwardOutput | None]:
        out: list[ForwardOutput | None] = []
        for row, (sequence, start) in enumerate(zip(sequences, starts, strict=True)):
            if sequence is None:
                out.append(None)
                continue
            session = self.sessions[row]
            out.append(session.forward_from(sequence, start, hidden))
            self.cached[row] = session.cached
        return out

    def tree_forward(
        self, row: int, sequence: Sequence[int], parents: Sequence[int], tokens: Sequence[int]
    ) -> torch.Tensor:
        logits = self.sessions[row].tree_forward(sequence, parents, tokens)
        self.cached[row] = self.sessions[row].cached
        return logits

    def commit_tree_path(self, row: int, path: Sequence[int]) -> None:
        self.sessions[row].commit_tree_path(path)
        self.cached[row] = self.sessions[row].cached
