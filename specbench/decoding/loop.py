"""The draft-then-verify loop every sequential method shares.

Each step: the drafter proposes up to ``k`` tokens, the target scores the committed sequence
plus the drafts in one call (its cache keeps everything already processed), the verifier
decides how many drafts to keep and which token follows, and the drafter hears the outcome.
With a drafter that proposes nothing, this is plain autoregressive decoding.
"""

from __future__ import annotations

import torch

from specbench.decoding.drafters import Drafter, Proposal
from specbench.decoding.sampling import logits_to_probs
from specbench.decoding.types import DecodeStats, GenerationRequest, GenerationResult, StopReason
from specbench.decoding.verify import Verifier
from specbench.models.base import LanguageModel


def speculative_generate(
    request: GenerationRequest,
    target: LanguageModel,
    drafter: Drafter,
    verifier: Verifier,
) -> GenerationResult:
    """Generate up to ``request.max_new_tokens`` tokens by drafting and verifying."""
    if not request.prompt_ids:
        raise ValueError("the prompt is empty: a generation needs at least one prompt token")
    session = target.new_session()
    generator = request.generator(target.device, stream=0)
    drafter.start(request)
    stats = DecodeStats()
    sequence = list(request.prompt_ids)
    new_tokens: list[int] = []
    stop_reason: StopReason = "length"

    while len(new_tokens) < request.max_new_tokens:
        # Every step yields accepted drafts plus one target token, so never draft past the
        # budget: drafts that could not be kept would only distort the statistics.
        budget = request.max_new_tokens - len(new_tokens) - 1
        proposal = drafter.propose(sequence, budget) if budget > 0 else Proposal(tokens=[])
        k = len(proposal.tokens)
        logits = session.logits_from(sequence + proposal.tokens, len(sequence) - 1)
        stats.target_calls += 1
        target_probs = logits_to_probs(logits, request.sampling)
        draft_probs = proposal.draft_probs(target_probs.shape[-1], target_probs.device)
        draft_tokens = torch.tensor([proposal.tokens], dtype=torch.long, device=target.device)
        verdict = verifier.verify(
            draft_tokens, draft_probs.unsqueeze(0), target_probs.unsqueeze(0), generator
        )
        accepted = int(verdict.accepted[0])
        expected = None if verdict.expected_accept is None else verdict.expected_accept[0].tolist()
        stats.record_step(k, accepted, expected)
        drafter.observe(k, accepted)

        for token in [*proposal.tokens[:accepted], int(verdict.next_tokens[0])]:
            new_tokens.append(token)
            if token in request.stop_token_ids:
                stop_reason = "eos"
                break
        if stop_reason == "eos":
            break
        sequence = request.prompt_ids + new_tokens

    stats.draft_calls = drafter.calls
    return GenerationResult(tokens=new_tokens, stop_reason=stop_reason, stats=stats)
