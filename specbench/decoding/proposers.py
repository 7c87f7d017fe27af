"""The one proposer interface: every way of drafting, for every row of a batch.

A :class:`Proposer` is told, for each unfinished row of a batch, the committed sequence
(prompt plus accepted output) and how many tokens it may still propose, and returns a
*draft* for each: a chain (:class:`Proposal`, verified by the method's verifier) or a token
tree (:class:`~specbench.decoding.tree.TokenTree`, walked by the target's own samples).
After the target has scored the drafts it hears each row's :class:`Outcome`. The draft
model, EAGLE-3 and Medusa heads, n-gram lookup, Suffix Decoding, Lookahead and Token
Recycling all implement this interface once; the execution core
(:mod:`specbench.decoding.core`) runs every one of them eagerly, with static caches, or
batched, as the method's ``engine`` and ``batch_size`` say (as Hugging Face's candidate
generators feed one ``generate``).

Proposers that keep per-sequence state index it by ``row`` (``start`` is told how many
rows there are); :class:`RowProposer` does the looping for proposers that treat rows
independently. Models a proposer runs come from the :class:`Sessions` handed to ``start``,
so its caches follow the engine the core chose.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol, Union

import torch

from specbench.decoding.sampling import one_hot
from specbench.decoding.types import GenerationRequest, GenerationResult

if TYPE_CHECKING:
    from specbench.decoding.tree import TokenTree
    from specbench.models.base import BatchSession, LanguageModel, Session


@dataclass
class Proposal:
    """A chain of draft tokens and ``probs`` (``[k, V]``), the distributions they were drawn
    from.

    ``probs`` is ``None`` for a deterministic proposal; the verifier then uses one-hot rows,
    which is exact: the draft distribution of a deterministic proposal is a point mass.
    ``hidden[i]`` is the draft's last hidden state at draft token ``i`` (proposers asked to
    collect it). The state at the last token costs one more draft forward, so a proposer may
    leave it out of ``hidden`` and hand over ``last_hidden``, which computes it on demand.
    """

    tokens: list[int]
    probs: torch.Tensor | None = None
    hidden: torch.Tensor | None = None
    last_hidden: Callable[[], torch.Tensor] | None = None

    def draft_probs(self, vocab_size: int, device: torch.device) -> torch.Tensor:
        """``probs`` on ``device``, or one-hot rows for a deterministic proposal."""
        if self.probs is not None:
            return self.probs.to(device)
        return one_hot(torch.tensor(self.tokens, dtype=torch.long, device=device), vocab_size)


#: What a proposer returns for one row: a chain or a token tree.
Draft = Union[Proposal, "TokenTree"]


@dataclass(frozen=True)
class Slot:
    """One row to draft for: its index in the batch, its committed tokens, and how many
    draft tokens could still be kept (every step also yields one target token, so drafts
    past ``budget`` would never be used). ``budget`` may be 0: propose nothing then."""

    row: int
    sequence: list[int]
    budget: int


@dataclass
class Outcome:
    """What the target made of one row's draft.

    ``path`` lists the draft positions kept, root down: node indices of a tree, or
    ``0 .. accepted - 1`` of a chain; ``token`` follows them (a correction or the bonus).
    ``logits`` are the target's raw logits of the call: a chain's ``k + 1`` rows, or a
    tree's root (row 0) and every node (row ``1 + i``); ``None`` when nothing was scored
    (``specbench replay``). ``hidden`` holds the target's last hidden states of a chain's
    rows when the proposer asked for them (``wants_target_hidden``).
    """

    row: int
    sequence: list[int]
    draft: Draft
    path: list[int]
    token: int
    logits: torch.Tensor | None = None
    hidden: torch.Tensor | None = None

    @property
    def accepted(self) -> int:
        return len(self.path)

    @property
    def proposed(self) -> int:
        return len(self.draft.tokens)


class Sessions(Protocol):
    """How a proposer gets caches for the models it runs, in the engine the core chose."""

    def session(
        self, model: LanguageModel, positions: int, lengths: tuple[int, ...] = ()
    ) -> Session:
        """A fresh cache for one sequence of up to ``positions`` tokens; ``lengths``: the
        call sizes worth capturing as graphs (static engine on CUDA) or compiling."""
        ...

    def rows(
        self, model: LanguageModel, size: int, positions: int, lengths: tuple[int, ...] = ()
    ) -> BatchSession:
        """Caches for ``size`` sequences scored together."""
        ...


class Proposer(ABC):
    """Drafts for the rows of a batch; see the module docstring.

    ``calls[row]`` counts the draft forwards (model calls, head calls) made for a row
    (0 for draft-free proposers); a batched forward counts once for every row in it.
    """

    #: Drafts token trees (walked by the target's samples) rather than chains.
    drafts_trees: bool = False
    #: Chains of at most this many tokens (the static engine captures a ``k + 1`` step).
    max_chain: int | None = None
    #: Asks the verification call for the target's last hidden states (``Outcome.hidden``).
    wants_target_hidden: bool = False
    #: Whether rows may share target calls; proposers that read target features through
    #: model hooks (EAGLE-3, Medusa trees) see one sequence per call.
    batchable: bool = True

    def __init__(self) -> None:
        self.calls: list[int] = []

    def start(self, requests: Sequence[GenerationRequest], sessions: Sessions) -> None:
        """Called once before each batch of generations; drop per-sequence state here."""
        self.calls = [0] * len(requests)

    @abstractmethod
    def propose(self, slots: Sequence[Slot]) -> list[Draft]:
        """One draft per slot, in order."""

    def observe(self, outcomes: Sequence[Outcome]) -> None:  # noqa: B027 - optional hook
        """Hear how each row's draft fared; the default ignores it."""

    def finish(self, results: Sequence[GenerationResult]) -> None:  # noqa: B027 - optional
        """Called after the batch with every row's result (Suffix Decoding keeps outputs)."""

    def stats(self, row: int) -> dict[str, float]:
        """Method-specific numbers of a row for its record (averaged per step when merged)."""
        return {}


class RowProposer(Proposer):
    """A proposer that treats each row on its own: implement :meth:`propose_row` (and
    optionally :meth:`observe_row`)."""

    def propose(self, slots: Sequence[Slot]) -> list[Draft]:
        return [self.propose_row(slot) for slot in slots]

    def observe(self, outcomes: Sequence[Outcome]) -> None:
        for outcome in outcomes:
            self.observe_row(outcome)

    @abstractmethod
    def propose_row(self, slot: Slot) -> Draft:
        """The draft for one row."""

    def observe_row(self, outcome: Outcome) -> None:
        """Hear how one row's draft fared."""


class NoProposer(RowProposer):
    """Proposes nothing: each step decodes one target token (plain decoding)."""

    max_chain = 0

    def propose_row(self, slot: Slot) -> Draft:
        return Proposal(tokens=[])
