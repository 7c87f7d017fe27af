"""AutoJudge (Garipov et al., 2025): lossy greedy speculative decoding with a learned judge.

The draft proposes ``k`` tokens greedily; the target scores them in one call. A draft token
is kept when it equals the target's greedy choice, or when the judge's probability that the
mismatch is important (would change the final answer) is below ``threshold``. At threshold 0
nothing but matches is kept: greedy speculative decoding, token for token. The judge is
trained by ``specbench train`` (or ``run --train``) and cached; see
:mod:`specbench.judge`.
"""

from __future__ import annotations

from pydantic import Field

from specbench.decoding.drafters import ModelDrafter
from specbench.errors import SpecbenchError
from specbench.judge.cache import StoredJudge, load_judge
from specbench.judge.settings import JudgeSettings
from specbench.judge.token_features import TokenFeaturizer
from specbench.judge.training import JudgeTraining
from specbench.judge.verifier import JudgeVerifier
from specbench.methods.in_process import InProcessMethod, OneSequenceParams
from specbench.plugins import (
    GenerationRequest,
    GenerationResult,
    MethodModels,
    ModelRole,
    RunContext,
)


class AutoJudgeParams(OneSequenceParams):
    k: int = Field(8, ge=1, le=64, description="Draft tokens per target call (window).")
    threshold: float = Field(
        0.5, ge=0, le=1, description="Keep a mismatch when P(important) is below this."
    )
    judge: JudgeSettings = Field(default_factory=JudgeSettings)


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
        "`specbench train` (or pass --train)"
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

    # -- training: the pipeline in specbench.judge.training ---------------------------------

    def training(self, context: RunContext) -> JudgeTraining:
        """This method's judge in ``context``'s run: its key, prompts and mining cache."""
        return JudgeTraining(self.settings, context)

    def train(self, context: RunContext) -> str | None:
        return self.training(context).train(self.models.target, self.models.require_draft())

    # -- decoding ------------------------------------------------------------------------

    def prepare(self, context: RunContext) -> None:
        if not context.sampling.greedy:
            raise SpecbenchError(
                f"method '{context.label}' (autojudge) decodes greedily",
                "set sampling.temperature = 0",
            )
        key = self.training(context).key()
        stored = load_judge(key)
        if stored is None or context.force_train:
            if not (context.train_missing or context.force_train):
                raise SpecbenchError(
                    f"method '{context.label}' needs a trained judge and none is cached "
                    f"(key {key})",
                    f"run `specbench train --preset {context.preset_source}`, or add "
                    "--train to this command",
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
