"""Chain proposers: a draft model, and n-gram lookup in the sequence itself.

Both implement :class:`~specbench.decoding.proposers.Proposer` once, for any batch size
and engine: the draft model runs every row's next draft token in one batched call (a
session per row where the engine does not batch), n-gram lookup handles each row alone.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from specbench.decoding.greedy import greedy_applies, greedy_token
from specbench.decoding.proposers import Draft, Proposal, Proposer, RowProposer, Sessions, Slot
from specbench.decoding.sampling import logits_to_probs, sample
from specbench.decoding.types import GenerationRequest
from specbench.models.base import BatchSession, LanguageModel


class ModelDrafter(Proposer):
    """Samples up to ``k`` tokens autoregressively from a draft model, keeping its caches.

    Tokens are drawn through the same logits processing as the target's, so ``q`` is exactly
    the distribution each draft token came from (each row draws from its own random stream,
    stream 1 of its request). With ``collect_hidden`` the proposal carries the draft's states
    at its tokens; the one at the last token is left to ``last_hidden``.
    """

    def __init__(self, model: LanguageModel, k: int, collect_hidden: bool = False) -> None:
        super().__init__()
        self.model = model
        self.k = k
        self.max_chain = k
        self.collect_hidden = collect_hidden
        self._rows: BatchSession | None = None
        self._requests: Sequence[GenerationRequest] = ()
        self._generators: list[torch.Generator] = []

    def start(self, requests: Sequence[GenerationRequest], sessions: Sessions) -> None:
        super().start(requests, sessions)
        self._requests = requests
        room = (self.max_chain or self.k) + 1
        positions = max(len(r.prompt_ids) + r.max_new_tokens for r in requests) + room
        self._rows = sessions.rows(self.model, len(requests), positions, lengths=(1,))
        self._generators = [r.generator(self.model.device, stream=1) for r in requests]

    def propose(self, slots: Sequence[Slot]) -> list[Draft]:
        rows = self._rows
        if rows is None:
            raise RuntimeError("ModelDrafter.propose called before start()")
        size = len(self._requests)
        wanted = [0] * size
        drafts: list[list[int] | None] = [None] * size
        for slot in slots:
            wanted[slot.row] = min(self.limit(slot), slot.budget)
            drafts[slot.row] = list(slot.sequence)
        tokens: list[list[int]] = [[] for _ in range(size)]
        probs: list[list[torch.Tensor]] = [[] for _ in range(size)]
        hidden: list[list[torch.Tensor]] = [[] for _ in range(size)]
        for step in range(max(wanted, default=0)):
            inputs = [
                d if d is not None and step < wanted[b] else None for b, d in enumerate(drafts)
            ]
            starts = [0 if d is None else len(d) - 1 for d in inputs]
            outputs = rows.forward_rows(inputs, starts, hidden=self.collect_hidden)
            for b, output in enumerate(outputs):
                if output is None:
                    continue
                self.calls[b] += 1
                if tokens[b] and output.hidden is not None:
                    hidden[b].append(output.hidden[-1])  # the state at the previous draft token
                sampling = self._requests[b].sampling
                if greedy_applies(sampling):
                    # Deterministic at temperature 0: the argmax, with no distribution
                    # (one-hot rows are implied and exact).
                    token = int(greedy_token(output.logits[-1]))
                else:
                    q = logits_to_probs(output.logits[-1], sampling)
                    token = int(sample(q, self._generators[b]))
                    probs[b].append(q)
                tokens[b].append(token)
                sequence = drafts[b]
                assert sequence is not None  # a row with output was given a sequence
                sequence.append(token)
        return [
            Proposal(
                tokens=tokens[slot.row],
                probs=torch.stack(probs[slot.row]) if probs[slot.row] else None,
                hidden=torch.stack(hidden[slot.row]) if hidden[slot.row] else None,
                last_hidden=self._last_hidden(slot.row, list(slot.sequence) + tokens[slot.row])
                if self.collect_hidden and tokens[slot.row]
                else None,
            )
            for slot in slots
        ]

    def limit(self, slot: Slot) -> int:
        """How many tokens to draft for this row now (adaptive drafters override it)."""
        return self.k

    def _last_hidden(self, row: int, draft: list[int]) -> Callable[[], torch.Tensor]:
        """The state at the last draft token: one more forward, made only when a verifier
        asks (a judge scoring a mismatch there), since most steps reject earlier."""
        rows = self._rows
        assert rows is not None

        def compute() -> torch.Tensor:
            inputs: list[list[int] | None] = [None] * rows.size
            inputs[row] = draft
            starts = [len(draft) - 1] * rows.size
            output = rows.forward_rows(inputs, starts, hidden=True)[row]
            self.calls[row] += 1
            assert output is not None and output.hidden is not None
            return output.hidden[-1]

        return compute


class NgramDrafter(RowProposer):
    """Prompt lookup: continue the latest earlier occurrence of the sequence's last n-gram.

    Tries ``n = max_ngram`` down to ``min_ngram``; the match may lie in the prompt or in the
    output so far. The proposal is deterministic, so its ``q`` is one-hot and the shared
    verifier stays exact at any temperature (Saxena's prompt lookup decoding; HF's
    ``prompt_lookup_num_tokens``). Records add ``lookup_hit_rate``.
    """

    def __init__(self, k: int, max_ngram: int = 3, min_ngram: int = 1) -> None:
        super().__init__()
        self.k = k
        self.max_chain = k
        self.max_ngram = max_ngram
        self.min_ngram = min_ngram
        self.lookups: list[int] = []
        self.hits: list[int] = []

    def start(self, requests: Sequence[GenerationRequest], sessions: Sessions) -> None:
        super().start(requests, sessions)
        self.lookups = [0] * len(requests)
        self.hits = [0] * len(requests)

    def propose_row(self, slot: Slot) -> Draft:
        limit = min(self.k, slot.budget)
        if limit <= 0:
            return Proposal(tokens=[])
        tokens = lookup_continuation(slot.sequence, limit, self.max_ngram, self.min_ngram)
        self.lookups[slot.row] += 1
        self.hits[slot.row] += bool(tokens)
        return Proposal(tokens=tokens)

    def stats(self, row: int) -> dict[str, float]:
        if not self.lookups or not self.lookups[row]:
            return {}
        return {"lookup_hit_rate": self.hits[row] / self.lookups[row]}


def lookup_continuation(
    sequence: Sequence[int], limit: int, max_ngram: int, min_ngram: int
) -> list[int]:
    """Up to ``limit`` tokens that followed the latest earlier match of the last n-gram."""
    length = len(sequence)
    for n in range(min(max_ngram, length - 1), min_ngram - 1, -1):
        tail = list(sequence[length - n :])
        # Latest match first; a match must end before the tail itself starts.
        for start in range(length - n - 1, -1, -1):
            if list(sequence[start : start + n]) == tail:
                follow = list(sequence[start + n : start + n + limit])
                if follow:
                    return follow
    return []
