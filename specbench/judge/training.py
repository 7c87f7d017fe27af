"""AutoJudge's training pipeline for one method of a run: the training prompts, the mining
cache and the judge's key (what the mined examples and the classifier depend on), then
mine -> columns -> classifier -> saved judge. The method (``methods/autojudge.py``) only
asks for a judge; ``specbench train`` and ``run --train`` reach this through its ``train``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from specbench.errors import SpecbenchError
from specbench.judge.cache import judge_key, judges_dir, load_judge, save_judge
from specbench.judge.classifier import TrainReport, block_columns, train_classifier
from specbench.judge.confidence_features import CONFIDENCE_FEATURE_NAMES
from specbench.judge.mining import (
    MinedData,
    MiningCache,
    MiningProgress,
    MiningSettings,
    NothingMinedError,
    hidden_width,
    mine_labels,
    mined_token_features,
)
from specbench.judge.settings import JudgeSettings
from specbench.judge.token_features import TokenFeaturizer
from specbench.models.backends import model_identity
from specbench.models.base import LanguageModel
from specbench.plugins import RunContext
from specbench.prompts.conversation import PromptEncoder
from specbench.prompts.prompt import Prompt
from specbench.prompts.sources import BuiltinPromptSet, PromptSetSpec
from specbench.prompts.tasks import Task, task_for


@dataclass(frozen=True)
class JudgeTraining:
    """The judge of one AutoJudge method in one run (its settings and the run's context)."""

    settings: JudgeSettings
    context: RunContext

    def training_prompts(self) -> PromptSetSpec:
        """The judge's training prompts: as configured, or the run's GSM8K set's train split."""
        if self.settings.prompts is not None:
            return self.settings.prompts
        run = self.context.prompts
        if isinstance(run, BuiltinPromptSet) and run.source == "gsm8k":
            return run.model_copy(update={"split": "train", "skip": 0})
        raise SpecbenchError(
            f"method '{self.context.label}' needs training prompts for its judge",
            "set methods.params.judge.prompts (a set with answers, disjoint from the run's)",
        )

    def mining_determinants(self) -> dict[str, Any]:
        """What the mined examples of a prompt depend on: not how many prompts are used."""
        prompts = self.training_prompts().model_dump(mode="json")
        draft_spec = self.context.models_spec.draft
        return {
            "target": model_identity(self.context.models_spec.target),
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

    def mining_cache(self) -> MiningCache:
        """Mined prompts, kept across judges: mining resumes and grows there."""
        return MiningCache(judges_dir() / "mined" / judge_key(self.mining_determinants()))

    def key(self) -> str:
        prompts = self.training_prompts()
        return judge_key(
            {
                **self.mining_determinants(),
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

    def train(self, target: LanguageModel, draft: LanguageModel) -> str:
        """Mine labels (resuming the mining cache), train the classifier, save the judge;
        a one-line summary. A judge already trained is found, not retrained."""
        key = self.key()
        if not self.context.force_train and load_judge(key) is not None:
            return f"{self.context.label}: judge {key} is already trained (--force retrains)"
        spec = self.training_prompts()
        prompts, task = self._checked_prompts(spec)
        data = self._mine(target, draft, spec, prompts, task)
        self.context.on_progress(
            f"training a {self.settings.classifier} judge on {len(data.labels)} mismatches"
        )
        features, column_sets = self._columns(data, target, draft)
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
            "method": self.context.label,
            "preset": self.context.preset_name,
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
        return self._summary(key, data, report)

    def _checked_prompts(self, spec: PromptSetSpec) -> tuple[list[Prompt], Task]:
        """The training prompts and the task that reads their answers; refused when they
        overlap the run's prompts or have no task."""
        prompts = spec.load(self.context.base_dir)
        overlap = {p.id for p in prompts} & set(self.context.prompt_ids)
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
        return prompts, task

    def _mine(
        self,
        target: LanguageModel,
        draft: LanguageModel,
        spec: PromptSetSpec,
        prompts: list[Prompt],
        task: Task,
    ) -> MinedData:
        encoder = PromptEncoder(target.tokenizer, spec.chat_template, spec.system_prompt)

        def progress(event: MiningProgress) -> None:
            self.context.on_progress(
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
            return mine_labels(
                target,
                draft,
                prompts,
                encoder,
                task.answer,
                settings,
                on_progress=progress,
                cache=self.mining_cache(),
            )
        except NothingMinedError as error:
            raise SpecbenchError(
                f"method '{self.context.label}' has nothing to train its judge on: {error}",
                "use more training prompts (judge.prompts), a larger judge.max_new_tokens, or "
                "a draft that differs from the target (judge.confidence_features = false if "
                "the target gives no logits)",
            ) from error

    def _columns(
        self, data: MinedData, target: LanguageModel, draft: LanguageModel
    ) -> tuple[torch.Tensor, dict[str, list[int]] | None]:
        """The judge's input columns (hidden states, then token and confidence traits) and,
        with ``feature_sets``, the column set of each candidate set."""
        features = data.features
        if self.settings.token_features:
            features = torch.cat([features, mined_token_features(data, target.tokenizer)], dim=-1)
        if self.settings.confidence_features:
            assert data.confidence is not None  # mining leaves out prompts without it
            features = torch.cat([features, data.confidence], dim=-1)
        if not self.settings.feature_sets:
            return features, None
        blocks = self.settings.blocks()
        draft_width = hidden_width(draft) if "draft" in blocks else 0
        widths = {
            "target": data.features.shape[1] - draft_width,
            "draft": draft_width,
            "tokens": TokenFeaturizer.width,
            "confidence": len(CONFIDENCE_FEATURE_NAMES),
        }
        return features, block_columns({b: widths[b] for b in blocks}, self.settings.feature_sets)

    def _summary(self, key: str, data: MinedData, report: TrainReport) -> str:
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
            f"{self.context.label}: judge {key} trained on {report.samples} mismatches "
            f"({report.important} important, {report.unimportant} unimportant) from "
            f"{data.prompts_used} prompts ({data.prompts_from_cache} mined before{replayed}, "
            f"{len(data.prompts_without_answer)} skipped: no finished answer; "
            f"{data.unfinished} unfinished continuations dropped); validation ROC-AUC {auc} "
            f"({report.validation}), C = {report.chosen_c:g}"
            + (f", features {report.chosen_features}" if report.chosen_features else "")
        )
