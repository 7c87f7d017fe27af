"""How AutoJudge's judge is trained: its training prompts, the mining search and the
classifier (a method's ``params.judge`` table)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from specbench.judge.classifier import C_GRID
from specbench.prompts.sources import PromptSetSpec


class JudgeSettings(BaseModel):
    """How the judge is trained: the training prompts, mining and the classifier."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    prompts: PromptSetSpec | None = Field(
        None,
        description="Training prompts; default: the run's GSM8K set with split = 'train'.",
    )
    max_new_tokens: int = Field(
        320,
        ge=8,
        description="Length of mined answers; answers that do not finish within it are "
        "skipped (no reliable final answer), so keep most of them inside.",
    )
    require_finished: bool = Field(
        True,
        description="Skip answers and continuations that stop at max_new_tokens (their final "
        "answer is unknown); off only for tasks whose answer exists at any length.",
    )
    max_mismatches_per_prompt: int = Field(16, ge=1, description="Spread over the answer.")
    batch_size: int = Field(8, ge=1, description="Prompts mined together (one batch a round).")
    speculative_k: int = Field(
        4,
        ge=0,
        le=16,
        description="Continue mismatches by batched greedy speculative decoding with the draft "
        "(k drafts; the same tokens, fewer target calls); 0: plain generate.",
    )
    search: Literal["semi-greedy", "independent"] = Field(
        "semi-greedy",
        description="semi-greedy: after an unimportant mismatch go on from the alternative "
        "answer (the paper); independent: every mismatch in the target's own answer.",
    )
    features: Literal["target", "target+draft"] = Field(
        "target+draft",
        description="Hidden states the judge reads at a mismatch: the target's, or both "
        "models' (the paper's DD-DT).",
    )
    token_features: bool = Field(
        False,
        description="Add what the two tokens look like (digits, blanks, words, symbols, how "
        "they relate) and the position in the response: a few columns a judge trained on "
        "hundreds of mismatches can use, where thousands of hidden dimensions are too many.",
    )
    confidence_features: bool = Field(
        False,
        description="Add the target's confidence at the mismatch: its probabilities of the "
        "draft's token and of its own choice, their ratio, its entropy and the draft token's "
        "rank. Prompts mined before these columns existed are replayed once to get them.",
    )
    feature_sets: list[str] = Field(
        default_factory=list,
        description="Column sets the validation chooses from, together with C and inside "
        "each fold (the reported ROC-AUC stays honest): '+'-joined blocks among target, "
        "draft, tokens, confidence, e.g. ['target+draft+tokens+confidence', "
        "'tokens+confidence']; each block must be on. Empty: the judge reads every column.",
    )
    classifier: Literal["logistic", "mlp"] = "logistic"
    c_grid: list[float] = Field(default_factory=lambda: list(C_GRID))
    folds: int = Field(
        5,
        ge=0,
        le=20,
        description="Validate by K-fold over whole training prompts (every mismatch scored "
        "by a model that never saw its prompt); below 2: one validation_fraction split.",
    )
    validation_fraction: float = Field(0.2, gt=0, lt=1)
    seed: int = 0

    @model_validator(mode="after")
    def _feature_sets_read_blocks_that_are_on(self) -> JudgeSettings:
        on = self.blocks()
        for name in self.feature_sets:
            for block in name.split("+"):
                if block not in FEATURE_BLOCKS:
                    raise ValueError(
                        f"feature set {name!r}: unknown block {block!r} (use '+'-joined "
                        f"names among {', '.join(FEATURE_BLOCKS)})"
                    )
                if block not in on:
                    raise ValueError(
                        f"feature set {name!r} reads {block!r}, which is off: turn it on "
                        f"({FEATURE_BLOCKS[block]}) or drop it from the set"
                    )
        return self

    def blocks(self) -> list[str]:
        """The feature blocks this judge computes, in column order."""
        flags = {
            "target": True,
            "draft": self.features == "target+draft",
            "tokens": self.token_features,
            "confidence": self.confidence_features,
        }
        return [block for block, on in flags.items() if on]


#: Feature blocks a judge can read, each with the setting that turns it on.
FEATURE_BLOCKS = {
    "target": "always on",
    "draft": "features = 'target+draft'",
    "tokens": "token_features = true",
    "confidence": "confidence_features = true",
}
