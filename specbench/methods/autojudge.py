"""AutoJudge (Garipov et al., 2025): lossy greedy speculative decoding with a learned judge.

The draft proposes ``k`` tokens greedily; the target scores them in one call. A draft token
is kept when it equals the target's greedy choice, or when the judge's probability that the
mismatch is important (would change the final answer) is below ``threshold``. At threshold 0
nothing but matches is kept: greedy speculative decoding, token for token. The judge is
trained by ``specbench judge train`` (or ``--train-judge``) and cached; see
:mod:`specbench.judge`.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, model_validator

from specbench.decoding.drafters import ModelDrafter
from specbench.decoding.verify import StepFeatures, Verdict, leading_accepts
from specbench.errors import SpecbenchError
from specbench.judge.cache import (
    StoredJudge,
    judge_key,
    judges_dir,
    load_judge,
    save_judge,
)
from specbench.judge.classifier import C_GRID, JudgeClassifier, block_columns, train_classifier
from specbench.judge.confidence_features import CONFIDENCE_FEATURE_NAMES, confidence_features
from specbench.judge.mining import (
    MiningCache,
    MiningProgress,
    MiningSettings,
    NothingMinedError,
    hidden_width,
    mine_labels,
    mined_token_features,
)
from specbench.judge.token_features import TokenFeaturizer
from specbench.methods.in_process import InProcessMethod, OneSequenceParams
from specbench.models.backends import model_identity
from specbench.plugins import (
    GenerationRequest,
    GenerationResult,
    MethodModels,
    ModelRole,
    RunContext,
)
from specbench.prompts.conversation import PromptEncoder
from specbench.prompts.sources import BuiltinPromptSet, PromptSetSpec
from specbench.prompts.tasks import task_for


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


class AutoJudgeParams(OneSequenceParams):
    k: int = Field(8, ge=1, le=64, description="Draft tokens per target call (window).")
    threshold: float = Field(
        0.5, ge=0, le=1, description="Keep a mismatch when P(important) is below this."
    )
    judge: JudgeSettings = Field(default_factory=JudgeSettings)


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


class AutoJudgeMethod(InProcessMethod[AutoJudgeParams]):
    """Greedy speculative decoding that accepts mismatches a learned judge deems harmless."""

    name = "autojudge"
    description = "Greedy drafts; a learned judge keeps harmless mismatches (lossy, AutoJudge)."
    needs = frozenset({ModelRole.TARGET, ModelRole.DRAFT})
    Params = AutoJudgeParams
    exact = False
    in_all = False  # needs a trained judge and greedy decoding: name it in the preset
    not_in_all_reason = (
        "lossy and needs a trained judge: list it under [[methods]] and run "
        "`specbench judge train` (or pass --train-judge)"
    )

    def __init__(self, params: AutoJudgeParams, models: MethodModels) -> None:
        super().__init__(params, models)
        self.settings = params.judge
        self.drafter = ModelDrafter(
            models.require_draft(), k=params.k, collect_hidden=params.judge.features != "target"
        )
        self.proposer = self.drafter
        self.threshold = params.threshold
        self.stored: StoredJudge | None = None

    # -- training ------------------------------------------------------------------------

    def training_prompts(self, context: RunContext) -> PromptSetSpec:
        """The judge's training prompts: as configured, or the run's GSM8K set's train split."""
        if self.settings.prompts is not None:
            return self.settings.prompts
        run = context.prompts
        if isinstance(run, BuiltinPromptSet) and run.source == "gsm8k":
            return run.model_copy(update={"split": "train", "skip": 0})
        raise SpecbenchError(
            f"method '{context.label}' needs training prompts for its judge",
            "set methods.params.judge.prompts (a set with answers, disjoint from the run's)",
        )

    def mining_determinants(self, context: RunContext) -> dict[str, Any]:
        """What the mined examples of a prompt depend on: not how many prompts are used."""
        prompts = self.training_prompts(context).model_dump(mode="json")
        draft_spec = context.models_spec.draft
        return {
            "target": model_identity(context.models_spec.target),
            "draft": None if draft_spec is None else model_identity(draft_spec),
            "prompts": {k: v for k, v in prompts.items() if k not in ("limit", "skip")},
            "mining": {
                "max_new_tokens": self.settings.max_new_tokens,
                "max_mismatches_per_prompt": self.settings.max_mismatches_per_prompt,
                "features": self.settings.features,
                "search": self.settings.search,
                "require_finished": self.settings.require_finished,
            },
        }

    def mining_cache(self, context: RunContext) -> MiningCache:
        """Mined prompts, kept across judges: mining resumes and grows there."""
        return MiningCache(judges_dir() / "mined" / judge_key(self.mining_determinants(context)))

    def key(self, context: RunContext) -> str:
        prompts = self.training_prompts(context)
        return judge_key(
            {
                **self.mining_determinants(context),
                "prompts": prompts.model_dump(mode="json"),
                "classifier": {
                    "kind": self.settings.classifier,
                    "c_grid": self.settings.c_grid,
                    "token_features": self.settings.token_features,
                    # Only when on: judges trained before the option keep their keys.
                    **({"confidence_features": True} if self.settings.confidence_features else {}),
                    **({"feature_sets": fs} if (fs := self.settings.feature_sets) else {}),
                    "folds": self.settings.folds,
                    "validation_fraction": self.settings.validation_fraction,
                    "seed": self.settings.seed,
                },
            }
        )

    def train(self, context: RunContext) -> str | None:
        key = self.key(context)
        if not context.force_train and load_judge(key) is not None:
            return f"{context.label}: judge {key} is already trained (--force retrains)"
        spec = self.training_prompts(context)
        prompts = spec.load(context.base_dir)
        overlap = {p.id for p in prompts} & set(context.prompt_ids)
        if overlap:
            raise SpecbenchError(
                f"the judge's training prompts overlap the run's prompts ({len(overlap)} shared, "
                f"e.g. {sorted(overlap)[0]})",
                "train on another split or use skip/limit so the two never overlap",
            )
        task = task_for(prompts[0])
        if task is None:
            raise SpecbenchError(
                "the judge's training prompts have no task to read answers with",
                "use gsm8k or humaneval prompts, or set prompts.task",
            )
        target, draft = self.models.target, self.models.require_draft()
        encoder = PromptEncoder(target.tokenizer, spec.chat_template, spec.system_prompt)

        def progress(event: MiningProgress) -> None:
            context.on_progress(
                f"mining {event.prompts_done}/{event.prompts_total} prompts: "
                f"{event.examples} mismatches ({event.important} important) - {event.message}"
            )

        settings = MiningSettings(
            max_new_tokens=self.settings.max_new_tokens,
            max_mismatches_per_prompt=self.settings.max_mismatches_per_prompt,
            batch_size=self.settings.batch_size,
            draft_features=self.settings.features != "target",
            semi_greedy=self.settings.search == "semi-greedy",
            require_finished=self.settings.require_finished,
            speculative_k=self.settings.speculative_k,
            confidence=self.settings.confidence_features,
        )
        try:
            data = mine_labels(
                target,
                draft,
                prompts,
                encoder,
                task.answer,
                settings,
                on_progress=progress,
                cache=self.mining_cache(context),
            )
        except NothingMinedError as error:
            raise SpecbenchError(
                f"method '{context.label}' has nothing to train its judge on: {error}",
                "use more training prompts (judge.prompts), a larger judge.max_new_tokens, or "
                "a draft that differs from the target (judge.confidence_features = false if "
                "the target gives no logits)",
            ) from error
        context.on_progress(
            f"training a {self.settings.classifier} judge on {len(data.labels)} mismatches"
        )
        features = data.features
        if self.settings.token_features:
            features = torch.cat([features, mined_token_features(data, target.tokenizer)], dim=-1)
        if self.settings.confidence_features:
            assert data.confidence is not None  # mining leaves out prompts without it
            features = torch.cat([features, data.confidence], dim=-1)
        column_sets = None
        if self.settings.feature_sets:
            blocks = self.settings.blocks()
            draft_width = hidden_width(draft) if "draft" in blocks else 0
            widths = {
                "target": data.features.shape[1] - draft_width,
                "draft": draft_width,
                "tokens": TokenFeaturizer.width,
                "confidence": len(CONFIDENCE_FEATURE_NAMES),
            }
            column_sets = block_columns({b: widths[b] for b in blocks}, self.settings.feature_sets)
        classifier, report = train_classifier(
            features,
            data.labels,
            kind=self.settings.classifier,
            c_grid=self.settings.c_grid,
            validation_fraction=self.settings.validation_fraction,
            seed=self.settings.seed,
            groups=data.groups,
            folds=self.settings.folds,
            column_sets=column_sets,
        )
        meta: dict[str, Any] = {
            "method": context.label,
            "preset": context.preset_name,
            "target": target.name,
            "draft": draft.name,
            "training_prompts": f"{getattr(spec, 'source', '?')} ({len(prompts)} prompts)",
            "mining": {
                "prompts_from_cache": data.prompts_from_cache,
                "prompts_replayed": data.prompts_replayed,
                "prompts_remined": data.prompts_remined,
                "prompts_left_out": data.prompts_left_out,
                "prompts_without_answer": len(data.prompts_without_answer),
                "unfinished_dropped": data.unfinished,
            },
            "settings": self.settings.model_dump(mode="json"),
        }
        save_judge(key, classifier, report, data, meta)
        auc = "n/a" if report.roc_auc is None else f"{report.roc_auc:.3f}"
        if report.roc_auc_interval is not None:
            low, high = report.roc_auc_interval
            auc += f" [95% {low:.2f}-{high:.2f}]"
        replayed = f", {data.prompts_replayed} replayed" if data.prompts_replayed else ""
        if data.prompts_remined:
            replayed += f", {data.prompts_remined} mined again: replay disagreed"
        if data.prompts_left_out:
            replayed += f", {len(data.prompts_left_out)} left out: no target logits"
        return (
            f"{context.label}: judge {key} trained on {report.samples} mismatches "
            f"({report.important} important, {report.unimportant} unimportant) from "
            f"{data.prompts_used} prompts ({data.prompts_from_cache} mined before{replayed}, "
            f"{len(data.prompts_without_answer)} skipped: no finished answer; "
            f"{data.unfinished} unfinished continuations dropped); validation ROC-AUC {auc} "
            f"({report.validation}), C = {report.chosen_c:g}"
            + (f", features {report.chosen_features}" if report.chosen_features else "")
        )

    # -- decoding ------------------------------------------------------------------------

    def prepare(self, context: RunContext) -> None:
        if not context.sampling.greedy:
            raise SpecbenchError(
                f"method '{context.label}' (autojudge) decodes greedily",
                "set sampling.temperature = 0",
            )
        key = self.key(context)
        stored = load_judge(key)
        if stored is None or context.force_train:
            if not (context.train_missing or context.force_train):
                raise SpecbenchError(
                    f"method '{context.label}' needs a trained judge and none is cached "
                    f"(key {key})",
                    f"run `specbench judge train --preset {context.preset_source}`, or add "
                    "--train-judge to this command",
                )
            context.on_progress(self.train(context) or "")
            stored = load_judge(key)
            assert stored is not None
        self.stored = stored
        self.verifier = JudgeVerifier(
            stored.classifier,
            self.threshold,
            draft_features=self.settings.features != "target",
            token_features=(
                TokenFeaturizer(self.models.target.tokenizer.decode)
                if self.settings.token_features
                else None
            ),
            confidence=self.settings.confidence_features,
        )

    def _judge(self) -> tuple[JudgeVerifier, StoredJudge]:
        if not isinstance(self.verifier, JudgeVerifier) or self.stored is None:
            raise SpecbenchError("autojudge was not prepared", "run it through specbench run")
        return self.verifier, self.stored

    def decode(self, requests: list[GenerationRequest]) -> list[GenerationResult]:
        self._judge()[0].reset()
        return super().decode(requests)

    def finish(self, results: list[GenerationResult]) -> None:
        judge, stored = self._judge()
        (result,) = results  # one sequence at a time: the judge's counters are its own
        report = stored.report
        extra = result.stats.extra
        mismatches = judge.mismatches
        extra["mismatches"] = float(mismatches)
        extra["judge_accepted"] = float(judge.judge_accepted)
        if mismatches:
            extra["judge_accept_rate"] = judge.judge_accepted / mismatches
            extra["target_fallback_rate"] = 1.0 - extra["judge_accept_rate"]
        extra["threshold"] = self.threshold
        extra["autojudge_train_samples"] = float(report.samples)
        extra["autojudge_train_loss"] = report.train_loss
        if report.roc_auc is not None:
            extra["autojudge_roc_auc"] = report.roc_auc
