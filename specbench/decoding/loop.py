"""The draft-then-verify loop every sequential method shares.

Each step: the drafter proposes up to ``k`` tokens, the target scores the committed sequence
plus the drafts in one call (its cache keeps everything already processed), the verifier
decides how many drafts to keep and which token follows, and the drafter hears the outcome.
With a drafter that proposes nothing, this is plain autoregressive decoding.

:class:`DecodeState` is the bookkeeping every loop shares (the token budget, stop tokens and
statistics); the tree loop of SpecExec uses it too.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from specbench.decoding import ledger
from specbench.decoding.drafters import Drafter, Proposal
from specbench.decoding.greedy import greedy_applies, greedy_verdict
from specbench.decoding.sampling import logits_to_probs
from specbench.decoding.types import DecodeStats, GenerationRequest, GenerationResult, StopReason
from specbench.decoding.verify import StepFeatures, Verifier
from specbench.models.base import ForwardOutput, LanguageModel

NO_PROPOSAL = Proposal(tokens=[])


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


def speculative_generate(
    request: GenerationRequest,
    target: LanguageModel,
    drafter: Drafter,
    verifier: Verifier,
) -> GenerationResult:
    """Generate up to ``request.max_new_tokens`` tokens by drafting and verifying."""
    state = DecodeState(request)
    session = target.new_session()
    generator = request.generator(target.device, stream=0)
    drafter.start(request)
    while not state.done:
        budget = state.draft_budget
        with ledger.phase("draft"):
            proposal = drafter.propose(state.sequence, budget) if budget > 0 else NO_PROPOSAL
        k = len(proposal.tokens)
        output = session.forward_from(
            state.sequence + proposal.tokens,
            len(state.sequence) - 1,
            hidden=verifier.needs_features or drafter.wants_target_hidden,
        )
        state.stats.target_calls += 1
        with ledger.phase("verify"):
            accepted, next_token, expected = _verify_step(
                request, proposal, output, verifier, generator, len(state.new_tokens)
            )
        state.stats.record_step(k, accepted, expected)
        with ledger.phase("draft"):
            drafter.observe(k, accepted)
            if drafter.wants_target_hidden and output.hidden is not None:
                drafter.observe_target_hidden(output.hidden[accepted])
        state.commit([*proposal.tokens[:accepted], next_token])
    return state.result(drafter.calls)


def _verify_step(
    request: GenerationRequest,
    proposal: Proposal,
    output: ForwardOutput,
    verifier: Verifier,
    generator: torch.Generator,
    position: int,
) -> tuple[int, int, list[float] | None]:
    """One chain's verdict: drafts accepted, the token that follows, and the verifier's
    acceptance probabilities (where it gives them)."""
    k = len(proposal.tokens)
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
        positions = torch.arange(k, device=device) + position
        features = StepFeatures(
            output.hidden.unsqueeze(0),
            None if proposal.hidden is None else proposal.hidden.unsqueeze(0),
            positions[None],
            _batch_of_one(proposal.last_hidden),
            target_logits=output.logits.unsqueeze(0),
        )
    verdict = verifier.verify(
        draft_tokens, draft_probs.unsqueeze(0), target_probs.unsqueeze(0), generator, features
    )
    expected = None if verdict.expected_accept is None else verdict.expected_accept[0].tolist()
    return int(verdict.accepted[0]), int(verdict.next_tokens[0]), expected


def _batch_of_one(
    compute: Callable[[], torch.Tensor] | None,
) -> Callable[[], torch.Tensor] | None:
    """A drafter's on-demand ``[D]`` state as the ``[1, D]`` a batch-first verifier reads."""
    if compute is None:
        return None
    return lambda: compute().unsqueeze(0)
