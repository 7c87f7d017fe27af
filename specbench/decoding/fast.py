"""The static-cache speculative loop: tokens stay on the device, one host sync per step.

Drafts are drawn on the device and fed straight back to the draft model; the target scores
them in one fixed-length call (a CUDA graph on a GPU); the shared verifier decides on the
device; only then does the host read how many were accepted, once per step. With ``k = 0``
(no draft model) it is plain decoding, one captured single-token step per token.

It draws from the same random streams in the same order as
:func:`specbench.decoding.loop.speculative_generate`, so on the same logits it produces the
same tokens, greedy or sampled.
"""

from __future__ import annotations

import torch

from specbench.decoding import ledger
from specbench.decoding.greedy import greedy_applies, greedy_token, greedy_verdict
from specbench.decoding.loop import DecodeState
from specbench.decoding.sampling import logits_to_probs, one_hot, sample
from specbench.decoding.types import GenerationRequest, GenerationResult
from specbench.decoding.verify import Verifier
from specbench.models.static import StaticDecoder


def fast_generate(
    request: GenerationRequest,
    target: StaticDecoder,
    draft: StaticDecoder | None,
    k: int,
    verifier: Verifier,
) -> GenerationResult:
    """Decode ``request`` with static caches (see module docstring)."""
    state = DecodeState(request)
    device = target.device
    prompt = torch.tensor(request.prompt_ids, dtype=torch.long, device=device)
    target_generator = request.generator(device, stream=0)
    # Room for the prompt, the budget and one step's drafts beyond it.
    needed = len(request.prompt_ids) + request.max_new_tokens + k + 1
    target.reserve(needed)
    if prompt.numel() > 1:
        target.forward(prompt[:-1])
    pending = prompt[-1:]  # tokens the target has not processed yet
    draft_generator = None
    draft_pending = pending
    if draft is not None:
        draft_generator = request.generator(draft.device, stream=1)
        draft.reserve(needed)
        if prompt.numel() > 1:
            draft.forward(prompt[:-1].to(draft.device))
    draft_calls = 0
    vocab = target.model.vocab_size
    greedy = greedy_applies(request.sampling)

    while not state.done:
        steps = min(k, state.draft_budget) if draft is not None else 0
        drafts: list[torch.Tensor] = []
        probs: list[torch.Tensor] = []
        if steps > 0 and draft is not None:
            with ledger.phase("draft"):
                for token in draft_pending[:-1]:  # catch up one token at a time: fixed shapes
                    draft.forward(token.view(1))
                    draft_calls += 1
                last = draft_pending[-1:].to(draft.device)
                for _ in range(steps):
                    logits = draft.forward(last)[-1]
                    draft_calls += 1
                    if greedy:
                        last = greedy_token(logits).view(1)
                    else:
                        q = logits_to_probs(logits, request.sampling)
                        last = sample(q, draft_generator).view(1)
                        probs.append(q.to(device))
                    drafts.append(last.to(device))
        start = target.length
        logits = target.forward(torch.cat([pending, *drafts]))
        state.stats.target_calls += 1
        with ledger.phase("verify"):
            draft_tokens = torch.cat(drafts).view(1, -1) if drafts else prompt.new_zeros(1, 0)
            if greedy and greedy_applies(request.sampling, verifier):
                verdict = greedy_verdict(draft_tokens, logits.unsqueeze(0))
            else:
                target_probs = logits_to_probs(logits, request.sampling)
                draft_probs = torch.stack(probs) if probs else one_hot(draft_tokens[0], vocab)
                verdict = verifier.verify(
                    draft_tokens,
                    draft_probs.unsqueeze(0),
                    target_probs.unsqueeze(0),
                    target_generator,
                )
            # The one host synchronisation of the step.
            values = torch.cat(
                [verdict.accepted.view(1), verdict.next_tokens.view(1), draft_tokens[0]]
            )
            accepted, next_token, *drafted = values.tolist()
            expected = (
                None if verdict.expected_accept is None else verdict.expected_accept[0].tolist()
            )
        state.stats.record_step(steps, accepted, expected)
        target.rollback(start + 1 + accepted)
        pending = values[1:2]  # the next token, still on the device: no copy back
        if draft is not None and steps > 0:
            # The draft processed its pending tokens and drafts 1..steps-1.
            kept = draft.length - (steps - 1) + min(accepted, steps - 1)
            draft.rollback(kept)
            draft_pending = torch.cat([values[-1:], pending]) if accepted == steps else pending
        elif draft is not None:
            draft_pending = torch.cat([draft_pending, pending])
        state.commit([*drafted[:accepted], next_token])
    return state.result(draft_calls)
