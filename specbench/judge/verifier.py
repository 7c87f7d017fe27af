"""The judge at decoding time: greedy verification that keeps the mismatches the trained
classifier deems unimportant."""

from __future__ import annotations

import torch

from specbench.decoding.verify import StepFeatures, Verdict, leading_accepts
from specbench.judge.classifier import JudgeClassifier
from specbench.judge.confidence_features import confidence_features
from specbench.judge.token_features import TokenFeaturizer


class JudgeVerifier:
    """Greedy verification that lets the judge keep unimportant mismatches."""

    needs_features = True

    def __init__(
        self,
        classifier: JudgeClassifier,
        threshold: float,
        draft_features: bool,
        token_features: TokenFeaturizer | None = None,
        confidence: bool = False,
    ) -> None:
        self.classifier = classifier
        self.threshold = threshold
        self.draft_features = draft_features
        self.token_features = token_features
        self.confidence = confidence
        self.mismatches = 0
        self.judge_accepted = 0

    def reset(self) -> None:
        self.mismatches = 0
        self.judge_accepted = 0

    def verify(
        self,
        draft_tokens: torch.Tensor,
        draft_probs: torch.Tensor,
        target_probs: torch.Tensor,
        generator: torch.Generator | None,
        features: StepFeatures | None = None,
    ) -> Verdict:
        batch, k = draft_tokens.shape
        choice = target_probs.argmax(dim=-1)  # [B, k + 1]: temperature 0, one-hot rows
        if k == 0:
            return Verdict(torch.zeros(batch, dtype=torch.long, device=choice.device), choice[:, 0])
        if features is None:
            raise ValueError("the judge needs the target's hidden states")
        match = draft_tokens == choice[:, :k]
        states = features.target_hidden[:, 1 : k + 1]
        if self.token_features is not None:
            if features.draft_positions is None:
                raise ValueError("token features need the draft tokens' positions")
            traits = self.token_features.features(
                draft_tokens.flatten(), choice[:, :k].flatten(), features.draft_positions.flatten()
            )
            traits = traits.reshape(batch, k, -1).to(states)
        else:
            traits = states[..., :0]
        if self.confidence:
            if features.target_logits is None:
                raise ValueError("confidence features need the target's logits")
            sure = confidence_features(features.target_logits[:, :k], draft_tokens, choice[:, :k])
            traits = torch.cat([traits, sure.to(states)], dim=-1)
        if not self.draft_features:
            unimportant = self._unimportant(torch.cat([states, traits], dim=-1))
        else:
            unimportant = self._unimportant_with_draft(states, traits, match, features)
        unimportant = unimportant.to(match.device)
        accepted = leading_accepts(match | unimportant)
        for row in range(batch):
            n = int(accepted[row])
            verified = min(n + 1, k)
            self.mismatches += int((~match[row, :verified]).sum())
            self.judge_accepted += int((~match[row, :n]).sum())
        rows = torch.arange(batch, device=choice.device)
        return Verdict(accepted=accepted, next_tokens=choice[rows, accepted])

    def _unimportant(self, columns: torch.Tensor) -> torch.Tensor:
        """Mismatches the judge lets through, for feature rows ``[B, n, D]``."""
        return self.classifier.prob_important(columns) < self.threshold

    def _unimportant_with_draft(
        self,
        target: torch.Tensor,
        traits: torch.Tensor,
        match: torch.Tensor,
        features: StepFeatures,
    ) -> torch.Tensor:
        """The judge with the draft's states, columns ``[target, draft, traits]``.

        When the drafter left the last token's state for later, the judge first scores the
        others and asks for it only in rows that reach a mismatch at the last token."""
        k = match.shape[1]
        known = 0 if features.draft_hidden is None else features.draft_hidden.shape[1]
        if known < k and (known != k - 1 or features.draft_hidden_last is None):
            raise ValueError(
                f"target+draft features need the draft's hidden states (got {known} of {k} "
                "draft tokens and no way to compute the last)"
            )
        unimportant = match.new_zeros(match.shape)
        if features.draft_hidden is not None and known:
            unimportant[:, :known] = self._unimportant(
                torch.cat(
                    [target[:, :known], features.draft_hidden.to(target), traits[:, :known]],
                    dim=-1,
                )
            ).to(match.device)
        if known < k and features.draft_hidden_last is not None:
            reaches = leading_accepts(match[:, :known] | unimportant[:, :known]) == known
            if bool((reaches & ~match[:, known]).any()):
                last = features.draft_hidden_last().to(target)[:, None]
                unimportant[:, known:] = self._unimportant(
                    torch.cat([target[:, known:], last, traits[:, known:]], dim=-1)
                ).to(match.device)
        return unimportant
