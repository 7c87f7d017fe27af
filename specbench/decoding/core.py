"""The execution core: the one decoding loop every in-process method runs on.

Each step, for every unfinished row of the batch:

1. the proposer drafts (a chain or a token tree, :mod:`specbench.decoding.proposers`);
2. the target scores the committed sequence plus the draft in one call (its cache keeps
   everything already processed; rows share the call where the engine batches);
3. chains go to the method's verifier (modified rejection sampling, or a lossy judge),
   trees are walked by the target's own samples (:func:`~specbench.decoding.tree.walk_tree`);
   at temperature 0 both decide from argmaxes (:mod:`specbench.decoding.greedy`);
4. the proposer hears each row's :class:`~specbench.decoding.proposers.Outcome`, and the
   kept tokens plus the target's next token are committed.

With a proposer that drafts nothing this is plain autoregressive decoding. The engine
(eager, static caches, CUDA graphs) comes from :class:`~specbench.decoding.execution.Execution`
and the batch from the number of requests: a method supplies its proposer, its verifier and
its parameters, never a loop. The cost ledger's ``draft`` and ``verify`` phases are marked
here once; forwards mark themselves in the sessions.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from specbench.decoding.execution import EAGER, EngineSessions, Execution
from specbench.decoding.greedy import greedy_applies, greedy_token, greedy_verdict
from specbench.decoding.proposers import Draft, NoProposer, Outcome, Proposal, Proposer, Slot
from specbench.decoding.sampling import logits_to_probs
from specbench.decoding.tree import TokenTree, walk_tree, walk_tree_with
from specbench.decoding.types import DecodeStats, GenerationRequest, GenerationResult, StopReason
from specbench.decoding.verify import RejectionVerifier, StepFeatures, Verifier
from specbench.models import ledger
from specbench.models.base import BatchSession, ForwardOutput, LanguageModel

#: Room a static cache keeps beyond the budget for a step's drafts when the proposer does
#: not say how many it makes (trees).
DRAFT_ROOM = 256


class DecodeState:
    """The committed sequence of one generation, its budget, stop condition and statistics."""

    def __init__(self, request: GenerationRequest) -> None:
        if not request.prompt_ids:
            raise ValueError("the prompt is empty: a generation needs at least one prompt token")
        self.request = request
        self.sequence = list(request.prompt_ids)
        self.new_tokens: list[int] = []
        self.stop_reason: StopReason = "length"
        self.stats = DecodeStats()

    @property
    def done(self) -> bool:
        return self.stop_reason == "eos" or len(self.new_tokens) >= self.request.max_new_tokens

    @property
    def draft_budget(self) -> int:
        """Drafts worth proposing now: every step also yields one target token, so drafts
        past the budget could never be kept and would only distort the statistics."""
        return self.request.max_new_tokens - len(self.new_tokens) - 1

    def commit(self, tokens: list[int]) -> None:
        """Append a step's tokens, stopping at an end-of-sequence token or the budget."""
        for token in tokens:
            if len(self.new_tokens) >= self.request.max_new_tokens:
                break
            self.new_tokens.append(token)
            self.sequence.append(token)
            if token in self.request.stop_token_ids:
                self.stop_reason = "eos"
                break

    def result(self, draft_calls: int) -> GenerationResult:
        self.stats.draft_calls = draft_calls
        return GenerationResult(self.new_tokens, self.stop_reason, self.stats)


def decode(
    requests: Sequence[GenerationRequest],
    target: LanguageModel,
    proposer: Proposer | None = None,
    verifier: Verifier | None = None,
    execution: Execution = EAGER,
) -> list[GenerationResult]:
    """Decode ``requests`` together (see the module docstring); one result per request.

    Results of a batch of more than one carry ``latency_s``: the time from the batch's start
    until that row finished.
    """
    proposer = proposer or NoProposer()
    verifier = verifier or RejectionVerifier()
    if len(requests) > 1 and not proposer.batchable:
        raise ValueError(f"{type(proposer).__name__} decodes one sequence at a time")
    sessions = EngineSessions(execution)
    try:
        return _Batch(requests, target, proposer, verifier, sessions).run()
    finally:
        sessions.close()


@dataclass
class _TreeTally:
    """Per-row tree statistics for the record (``tree_size`` and friends)."""

    sizes: int = 0
    nodes: int = 0
    parallelism: float = 0.0
    widest: int = 0
    candidates: int = 0
    pruned: int = 0

    def add(self, tree: TokenTree) -> None:
        if not len(tree):
            return
        self.sizes += 1
        self.nodes += len(tree)
        self.parallelism += len(tree) / max(tree.depths)
        self.widest = max(self.widest, tree.widest_level())
        self.candidates += tree.candidates
        self.pruned += tree.candidates - len(tree)

    def extra(self) -> dict[str, float]:
        if not self.sizes:
            return {}
        out = {
            "tree_size": self.nodes / self.sizes,
            "effective_parallelism": self.parallelism / self.sizes,
            "max_active_branches": float(self.widest),
        }
        if self.candidates:
            out["branch_prune_rate"] = self.pruned / self.candidates
        return out


class _Batch:
    """One call of :func:`decode`: the rows' states, the target's caches, the loop."""

    def __init__(
        self,
        requests: Sequence[GenerationRequest],
        target: LanguageModel,
        proposer: Proposer,
        verifier: Verifier,
        sessions: EngineSessions,
    ) -> None:
        self.requests = requests
        self.target = target
        self.proposer = proposer
        self.verifier = verifier
        self.sessions = sessions
        self.states = [DecodeState(r) for r in requests]
        self.generators = [r.generator(target.device, stream=0) for r in requests]
        self.trees = [_TreeTally() for _ in requests]
        self.hidden = proposer.wants_target_hidden or verifier.needs_features
        room = DRAFT_ROOM if proposer.max_chain is None else proposer.max_chain + 1
        positions = max(len(r.prompt_ids) + r.max_new_tokens for r in requests) + room
        lengths = (1,) if proposer.max_chain is None else (1, proposer.max_chain + 1)
        self.rows: BatchSession = sessions.rows(
            target,
            len(requests),
            positions,
            lengths,
            per_row=proposer.drafts_trees,
        )

    def run(self) -> list[GenerationResult]:
        proposer = self.proposer
        proposer.start(self.requests, self.sessions)
        latencies = [0.0] * len(self.states)
        started = time.perf_counter()
        while True:
            slots = [
                Slot(row, state.sequence, state.draft_budget)
                for row, state in enumerate(self.states)
                if not state.done
            ]
            if not slots:
                break
            with ledger.phase("draft"):
                drafts = proposer.propose(slots)
            outcomes = self._score_and_verify(slots, drafts)
            with ledger.phase("draft"):
                proposer.observe(outcomes)
            now = time.perf_counter()
            for outcome in outcomes:
                state = self.states[outcome.row]
                draft = outcome.draft
                if isinstance(draft, TokenTree):
                    self.rows.commit_tree_path(outcome.row, outcome.path)
                state.commit([*(draft.tokens[i] for i in outcome.path), outcome.token])
                if state.done:
                    latencies[outcome.row] = now - started
        results = []
        for row, state in enumerate(self.states):
            result = state.result(proposer.calls[row] if proposer.calls else 0)
            result.stats.extra.update(self.trees[row].extra())
            result.stats.extra.update(proposer.stats(row))
            if len(self.states) > 1:
                result.latency_s = latencies[row]
            results.append(result)
        proposer.finish(results)
        return results

    def _score_and_verify(self, slots: Sequence[Slot], drafts: Sequence[Draft]) -> list[Outcome]:
        """One target call per step (per row for trees), then each row's verdict."""
        chains: dict[int, Proposal] = {}
        trees: dict[int, TokenTree] = {}
        for slot, draft in zip(slots, drafts, strict=True):
            if isinstance(draft, TokenTree):
                trees[slot.row] = draft
            else:
                chains[slot.row] = draft
        size = len(self.states)
        outputs: list[ForwardOutput | None] = [None] * size
        if chains:
            sequences = [
                self.states[row].sequence + chains[row].tokens if row in chains else None
                for row in range(size)
            ]
            starts = [len(self.states[row].sequence) - 1 for row in range(size)]
            outputs = self.rows.forward_rows(sequences, starts, hidden=self.hidden)
        tree_logits = {
            row: self.rows.tree_forward(row, self.states[row].sequence, tree.parents, tree.tokens)
            for row, tree in trees.items()
        }
        outcomes = []
        with ledger.phase("verify"):
            for slot, draft in zip(slots, drafts, strict=True):
                row = slot.row
                state = self.states[row]
                state.stats.target_calls += 1
                if isinstance(draft, TokenTree):
                    logits = tree_logits[row]
                    path, token, verified = self._walk(row, draft, logits)
                    state.stats.record_walk(len(draft), len(path), verified)
                    self.trees[row].add(draft)
                    outcomes.append(Outcome(row, state.sequence, draft, path, token, logits))
                    continue
                output = outputs[row]
                assert output is not None
                accepted, token, expected = self._verify_chain(row, draft, output)
                state.stats.record_step(len(draft.tokens), accepted, expected)
                outcomes.append(
                    Outcome(
                        row,
                        state.sequence,
                        draft,
                        list(range(accepted)),
                        token,
                        output.logits,
                        output.hidden if self.proposer.wants_target_hidden else None,
                    )
                )
        return outcomes

    def _walk(self, row: int, tree: TokenTree, logits: torch.Tensor) -> tuple[list[int], int, int]:
        request = self.requests[row]
        if greedy_applies(request.sampling):
            # The target's own argmax at every node: one [nodes + 1] read, no one-hot rows.
            choices = greedy_token(logits).tolist()
            return walk_tree_with(tree, choices.__getitem__)
        probs = logits_to_probs(logits, request.sampling)
        return walk_tree(tree, probs, self.generators[row])

    def _verify_chain(
        self, row: int, proposal: Proposal, output: ForwardOutput
    ) -> tuple[int, int, list[float] | None]:
        """One chain's verdict: drafts accepted, the token that follows, and the verifier's
        acceptance probabilities (where it gives them)."""
        request = self.requests[row]
        verifier = self.verifier
        device = output.logits.device
        draft_tokens = torch.tensor([proposal.tokens], dtype=torch.long, device=device)
        if greedy_applies(request.sampling, verifier):
            verdict = greedy_verdict(draft_tokens, output.logits.unsqueeze(0))
            # One host read of the step: accepted, the next token and the matches.
            assert verdict.expected_accept is not None
            decided = [verdict.accepted, verdict.next_tokens, verdict.expected_accept[0].long()]
            accepted, next_token, *matches = torch.cat(decided).tolist()
            return accepted, next_token, [float(m) for m in matches]
        target_probs = logits_to_probs(output.logits, request.sampling)
        draft_probs = proposal.draft_probs(target_probs.shape[-1], device)
        features = None
        if output.hidden is not None and verifier.needs_features:
            position = len(self.states[row].new_tokens)
            positions = torch.arange(len(proposal.tokens), device=device) + position
            features = StepFeatures(
                output.hidden.unsqueeze(0),
                None if proposal.hidden is None else proposal.hidden.unsqueeze(0),
                positions[None],
                _batch_of_one(proposal.last_hidden),
                target_logits=output.logits.unsqueeze(0),
            )
        verdict = verifier.verify(
            draft_tokens,
            draft_probs.unsqueeze(0),
            target_probs.unsqueeze(0),
            self.generators[row],
            features,
        )
        expected = None if verdict.expected_accept is None else verdict.expected_accept[0].tolist()
        return int(verdict.accepted[0]), int(verdict.next_tokens[0]), expected


def _batch_of_one(
    compute: Callable[[], torch.Tensor] | None,
) -> Callable[[], torch.Tensor] | None:
    """A proposer's on-demand ``[D]`` state as the ``[1, D]`` a batch-first verifier reads."""
    if compute is None:
        return None
    return lambda: compute().unsqueeze(0)
