"""Label mining for AutoJudge: which draft/target mismatches change the final answer?

For each training prompt: the target answers greedily; the draft, teacher-forced on that
answer, proposes its own argmax at every position; at each position where it disagrees, the
draft's token is substituted and the target continues greedily. The mismatch is
*unimportant* (label 0) when the final answer is unchanged, *important* (label 1) otherwise.
The feature of a mismatch is the target's last hidden state at the substituted token (what
the verifier sees at decode time), optionally joined with the draft's.

Continuations of all mismatches of a prompt are independent, so they run in batches
(``batch_size``): on a CPU that is what makes mining affordable.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from specbench.conversation import PromptEncoder
from specbench.models.base import LanguageModel
from specbench.prompts import Prompt

AnswerFn = Callable[[Prompt, str], Hashable | None]


@dataclass
class MiningSettings:
    max_new_tokens: int = 256
    max_mismatches_per_prompt: int = 32
    batch_size: int = 8
    draft_features: bool = False


@dataclass
class MinedExample:
    prompt_id: str
    position: int
    draft_token: int
    target_token: int
    important: bool


@dataclass
class MiningProgress:
    prompts_done: int
    prompts_total: int
    examples: int
    important: int
    message: str


@dataclass
class MinedData:
    """Features ``[N, H]``, labels ``[N]`` (1 = important) and what each row is."""

    features: torch.Tensor
    labels: torch.Tensor
    examples: list[MinedExample]
    prompts_used: int
    prompts_without_answer: list[str] = field(default_factory=list)

    def counts(self) -> dict[str, int]:
        important = int(self.labels.sum())
        return {"important": important, "unimportant": len(self.labels) - important}


def mine_labels(
    target: LanguageModel,
    draft: LanguageModel,
    prompts: Sequence[Prompt],
    encoder: PromptEncoder,
    answer: AnswerFn,
    settings: MiningSettings,
    on_progress: Callable[[MiningProgress], None] | None = None,
) -> MinedData:
    """Mine labelled mismatches from ``prompts`` (see the module docstring)."""
    report = on_progress or (lambda progress: None)
    stop_ids = frozenset(target.tokenizer.eos_token_ids)
    features: list[torch.Tensor] = []
    examples: list[MinedExample] = []
    without_answer: list[str] = []
    for index, prompt in enumerate(prompts):
        prompt_ids = encoder.encode([], prompt.turns[0], prompt.system)
        reference = target.greedy_continuations([prompt_ids], settings.max_new_tokens, stop_ids)[0]
        response = reference.tokens
        reference_answer = answer(prompt, target.tokenizer.decode(response))
        if reference_answer is None:
            without_answer.append(prompt.id)
            report(_progress(index + 1, len(prompts), examples, f"{prompt.id}: no answer, skipped"))
            continue
        positions, draft_tokens = _mismatches(draft, prompt_ids, response)
        positions, draft_tokens = _spread(
            positions, draft_tokens, settings.max_mismatches_per_prompt
        )
        prefixes = [
            prompt_ids + response[:position] + [token]
            for position, token in zip(positions, draft_tokens, strict=True)
        ]
        continuations = target.greedy_continuations(
            prefixes,
            max(1, settings.max_new_tokens - min(positions, default=0) - 1),
            stop_ids,
            batch_size=settings.batch_size,
        )
        draft_states = _draft_states(draft, prefixes) if settings.draft_features else None
        for i, (position, token, continuation) in enumerate(
            zip(positions, draft_tokens, continuations, strict=True)
        ):
            budget = settings.max_new_tokens - position - 1
            alternative = response[:position] + [token] + continuation.tokens[:budget]
            changed = answer(prompt, target.tokenizer.decode(alternative)) != reference_answer
            feature = continuation.prefix_hidden
            if draft_states is not None:
                feature = torch.cat([feature, draft_states[i]])
            features.append(feature.float().cpu())
            examples.append(MinedExample(prompt.id, position, token, response[position], changed))
        report(
            _progress(
                index + 1, len(prompts), examples, f"{prompt.id}: {len(positions)} mismatches"
            )
        )
    if not examples:
        raise ValueError("mining found no mismatches: are the target and draft identical?")
    return MinedData(
        features=torch.stack(features),
        labels=torch.tensor([e.important for e in examples], dtype=torch.long),
        examples=examples,
        prompts_used=len(prompts) - len(without_answer),
        prompts_without_answer=without_answer,
    )


def _mismatches(
    draft: LanguageModel, prompt_ids: list[int], response: list[int]
) -> tuple[list[int], list[int]]:
    """Positions where the draft's argmax, teacher-forced on ``response``, differs from it."""
    logits = draft.new_session().logits_from(prompt_ids + response, len(prompt_ids) - 1)
    predictions = logits[: len(response)].argmax(-1).tolist()
    pairs = [(j, p) for j, (p, r) in enumerate(zip(predictions, response, strict=True)) if p != r]
    return [j for j, _ in pairs], [p for _, p in pairs]


def _spread(positions: list[int], tokens: list[int], limit: int) -> tuple[list[int], list[int]]:
    """At most ``limit`` mismatches, evenly spaced over the answer (deterministic)."""
    if len(positions) <= limit:
        return positions, tokens
    picks = sorted({round(i * (len(positions) - 1) / (limit - 1)) for i in range(limit)})
    return [positions[i] for i in picks], [tokens[i] for i in picks]


def _draft_states(draft: LanguageModel, prefixes: list[list[int]]) -> list[torch.Tensor]:
    """The draft's hidden state at the last token of each prefix (one shared session)."""
    session = draft.new_session()
    states = []
    for prefix in prefixes:
        output = session.forward_from(prefix, len(prefix) - 1, hidden=True)
        assert output.hidden is not None
        states.append(output.hidden[-1].float().cpu())
    return states


def _progress(done: int, total: int, examples: list[MinedExample], message: str) -> MiningProgress:
    important = sum(e.important for e in examples)
    return MiningProgress(done, total, len(examples), important, message)


def example_rows(data: MinedData) -> list[dict[str, Any]]:
    return [e.__dict__ for e in data.examples]
