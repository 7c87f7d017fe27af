"""How sure the target was at a mismatch: its distribution over the two tokens.

A hidden state holds what the target knows, but a judge trained on a few hundred mismatches
cannot read a softmax out of 1536 dimensions with a linear model. The target's own
probabilities say it directly: when the draft's token was the target's close second (a
synonym, another way to start a sentence) the swap rarely matters; when the target was sure
and the draft's token is far down its list (a digit, an operator), it usually does.

Each mismatch gets the target's log-probability and probability of the draft's token and of
its own choice, their log ratio, the entropy of its distribution and the draft token's rank.
Mining (from the target's logits at the mismatch) and the verifier (from the verification
call's raw logits) both call :func:`confidence_features`, so the judge sees the same columns.
"""

from __future__ import annotations

import torch

CONFIDENCE_FEATURE_NAMES = (
    "log_p_draft",
    "log_p_target",
    "p_draft",
    "p_target",
    "log_ratio",
    "entropy",
    "log_rank_draft",
)


def confidence_features(
    logits: torch.Tensor, draft_tokens: torch.Tensor, target_tokens: torch.Tensor
) -> torch.Tensor:
    """Columns ``[..., 7]`` (:data:`CONFIDENCE_FEATURE_NAMES`) for raw target ``logits
    [..., V]`` (before temperature or filtering) and the two tokens ``[...]`` of each row."""
    log_p = logits.float().log_softmax(dim=-1)
    draft = draft_tokens.to(log_p.device).long().unsqueeze(-1)
    target = target_tokens.to(log_p.device).long().unsqueeze(-1)
    log_p_draft = log_p.gather(-1, draft).squeeze(-1)
    log_p_target = log_p.gather(-1, target).squeeze(-1)
    entropy = -(log_p.exp() * log_p).nan_to_num().sum(dim=-1)
    # Tokens the target ranks above the draft's: 0 when the draft's token is its first choice.
    rank = (log_p > log_p_draft.unsqueeze(-1)).sum(dim=-1).float()
    return torch.stack(
        [
            log_p_draft,
            log_p_target,
            log_p_draft.exp(),
            log_p_target.exp(),
            log_p_target - log_p_draft,
            entropy,
            torch.log1p(rank),
        ],
        dim=-1,
    )
