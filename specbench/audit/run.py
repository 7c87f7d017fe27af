"""``specbench audit``: is each exact method of a preset really lossless on its own models?

* **Sampling** (temperature > 0, the preset's top-k / top-p): for ``prompts`` fixed prompts,
  ``samples`` generations of the first ``tokens`` tokens per method. Position 0 is tested
  against the target's exact ``p(. | prompt)``, each later position against
  ``p(. | prompt, sampled prefix)``, both computed by teacher-forcing the target through the
  same logits processing (:mod:`specbench.audit.stats`). A method whose output does not come
  from the in-process target (an external engine, see
  :meth:`DecodingMethod.reference_method`) is compared with that engine's plain decoding by
  a two-sample test instead. All tests of one audit share a family-wise ``alpha``
  (Bonferroni).
* **Greedy** (temperature 0): token-for-token equality with the baseline. At the first
  difference the target's top-2 logit margin tells a numerical near-tie from a bug.
* **Lossy** methods are not audited; their divergence from the baseline (share of differing
  tokens) is measured on the same prompts and seeds instead.

This module orders the methods, prepares them through the session plan and gives each one
strategy (:mod:`specbench.audit.strategies`); :mod:`specbench.audit.draws` makes the draws.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from specbench.audit.draws import DrawBook
from specbench.audit.strategies import (
    AuditContext,
    AuditStrategy,
    GoodnessOfFit,
    GreedyIdentity,
    LossyDivergence,
    Mode,
    SamplingTests,
    TwoSample,
    error_record,
    reference_record,
)
from specbench.decoding.sampling import SamplingParams
from specbench.errors import SpecbenchError
from specbench.plugins import (
    DecodingMethod,
    MethodModels,
    ModelRole,
    own_baseline,
    reference_method,
)
from specbench.presets.schema import ResolvedPreset, first_level_only
from specbench.prompts.conversation import PromptEncoder
from specbench.records import AuditRecord, RecordWriter
from specbench.run.plan import SessionPlan
from specbench.run.runner import run_end_record, run_header

#: Largest top-2 logit margin that still counts as a numerical near-tie, per target dtype.
TIE_MARGINS = {"bfloat16": 0.5, "float16": 0.1, "float32": 0.01, "float64": 1e-6}
DEFAULT_TIE_MARGIN = 0.01


@dataclass(frozen=True)
class AuditOptions:
    """What to draw: ``samples`` generations of ``tokens`` tokens on ``prompts`` prompts.

    ``tokens`` ``None`` means 3 when sampling and the preset's ``max_new_tokens`` when greedy;
    ``prompts`` ``None`` means 2 when sampling and 5 when greedy.
    """

    samples: int = 2000
    tokens: int | None = None
    prompts: int | None = None
    alpha: float = 0.01
    tie_margin: float | None = None
    methods: Sequence[str] | None = None


@dataclass
class AuditOutcome:
    output: Path
    records: list[AuditRecord]
    mode: Mode
    tests: int
    #: Prompts audited, generations per prompt and tokens tested of each.
    prompts: int = 0
    samples: int = 0
    tokens: int = 0
    #: Methods whose draws were identical, token for token (they share seeds and the same
    #: draws of the target): one test, not several.
    identical: list[list[str]] = field(default_factory=list)

    @property
    def failed(self) -> list[AuditRecord]:
        return [r for r in self.records if r.exact and r.verdict in ("fail", "error")]


AuditProgress = Callable[[str], None]


def audit_preset(
    resolved: ResolvedPreset,
    options: AuditOptions,
    output: Path,
    on_progress: AuditProgress | None = None,
) -> AuditOutcome:
    """Audit every method of ``resolved`` and write the verdicts to ``output`` (JSONL)."""
    report = on_progress or (lambda message: None)
    if output.exists() and output.stat().st_size > 0:
        raise SpecbenchError(
            f"{output} already holds results", "choose another --output, or remove that file"
        )
    if resolved.preset.runs.concurrency and len(resolved.preset.runs.concurrency) > 1:
        report(
            "note: load levels are not audited one by one (a level changes how many requests "
            "are in flight, not what one returns): each server is audited at its first level"
        )
        resolved = first_level_only(resolved)
    preset = resolved.preset
    sampling = SamplingParams(
        preset.sampling.temperature, preset.sampling.top_k, preset.sampling.top_p
    )
    mode: Mode = "greedy" if sampling.greedy else "sampling"
    n_prompts = options.prompts or (2 if mode == "sampling" else 5)

    chosen = [m for m in resolved.methods if not options.methods or m.label in options.methods]
    roles = frozenset(role for m in chosen for role in m.info.cls.needs)
    if mode == "sampling" and any(m.info.cls.exact for m in chosen):
        roles |= {ModelRole.TARGET}  # the exact distribution comes from the target
    if mode == "greedy" and any(not m.info.cls.needs for m in chosen):
        # Engines: where a greedy output leaves the engine's own, the in-process copy of
        # the target tells a near-tie from a bug (the same weights, other arithmetic).
        roles |= {ModelRole.TARGET}
    if mode == "greedy" and any(m.label == preset.runs.baseline for m in resolved.methods):
        baseline_info = next(m for m in resolved.methods if m.label == preset.runs.baseline)
        roles |= baseline_info.info.cls.needs
    prompts = preset.prompts.load(resolved.base_dir)[:n_prompts]
    with SessionPlan.open(resolved, prompts, report, roles=roles) as plan:
        for model in plan.models.loaded:
            model.simulate_costs = False  # nothing is timed here
            # Thousands of short draws from one prompt: process the prompt once.
            model.reuse_prompt_cache = mode == "sampling"
        tokenizer = plan.models.tokenizer
        encoder = PromptEncoder(
            tokenizer, preset.prompts.chat_template, preset.prompts.system_prompt
        )
        encoded = [encoder.encode([], p.turns[0], p.system) for p in prompts]
        if any(not ids for ids in encoded):
            raise SpecbenchError("a prompt encodes to no tokens", "remove or fix that prompt")
        return _audit_methods(resolved, options, output, report, plan, encoded)


def _audit_methods(
    resolved: ResolvedPreset,
    options: AuditOptions,
    output: Path,
    report: AuditProgress,
    plan: SessionPlan,
    encoded: list[list[int]],
) -> AuditOutcome:
    audit = _Audit(resolved, options, report, plan, encoded)
    records, total_tests = audit.run()
    order = {label: i for i, label in enumerate(audit.labels)}
    records.sort(key=lambda r: order.get(r.method, len(order)))
    header = run_header(resolved, plan.models, session=1)
    for record in records:
        record.run_id = header.run_id
    with RecordWriter(output) as writer:
        writer.write(header)
        for record in records:
            writer.write(record)
        writer.write(run_end_record(header.run_id, 1, "finished"))
    # Greedy outputs are meant to be identical; sampled ones only are when seeds coincide.
    identical = audit.book.identical_groups(audit.labels) if audit.mode == "sampling" else []
    return AuditOutcome(
        output,
        records,
        audit.mode,
        total_tests,
        len(encoded),
        audit.book.samples,
        audit.book.tokens,
        identical,
    )


class _Audit:
    """One audit's order of methods, their preparation, and the strategy each one gets."""

    def __init__(
        self,
        resolved: ResolvedPreset,
        options: AuditOptions,
        report: AuditProgress,
        plan: SessionPlan,
        encoded: list[list[int]],
    ) -> None:
        preset = resolved.preset
        self.plan = plan
        self.options = options
        self.report = report
        self.methods = plan.methods
        sampling = SamplingParams(
            preset.sampling.temperature, preset.sampling.top_k, preset.sampling.top_p
        )
        self.mode: Mode = "greedy" if sampling.greedy else "sampling"
        tokens = options.tokens or (
            3 if self.mode == "sampling" else preset.sampling.max_new_tokens
        )
        self.book = DrawBook(
            encoded,
            options.samples if self.mode == "sampling" else 1,
            tokens,
            sampling,
            preset.sampling.seed,
            frozenset(plan.models.tokenizer.eos_token_ids),
            report,
        )
        self.labels = [
            m.label for m in resolved.methods if not options.methods or m.label in options.methods
        ]
        self.baseline_label = preset.runs.baseline
        # Methods measured against a plain-decoding row of their own (engines), by label.
        self.references = {
            label: reference
            for label, reference in plan.references.items()
            if own_baseline(self.methods[label]) is not None
        }
        self.referenced = {
            r for label in self.labels if (r := self.references.get(label)) and r != label
        }
        self.method_major = preset.runs.order != "prompt"  # one engine alive at a time
        self.prepared: dict[str, str | None] = {}
        self.context = AuditContext(
            self.mode,
            sampling,
            tokens,
            self.book,
            lambda: plan.models.target,
            self.tie_margin,
            None,
            report,
        )

    def tie_margin(self) -> float:
        """The largest top-2 margin that counts as a near-tie: ``--tie-margin``, else by the
        target's dtype."""
        if self.options.tie_margin is not None:
            return self.options.tie_margin
        dtype = str(self.plan.models.target.describe().get("dtype", ""))
        return TIE_MARGINS.get(dtype, DEFAULT_TIE_MARGIN)

    def run(self) -> tuple[list[AuditRecord], int]:
        """Every chosen method judged: the records, and how many sampling tests they hold."""
        needed = self.labels + sorted(self.referenced - set(self.labels))
        # Like the runner: the baseline first, then references (their draws are cached for
        # the rows that need them), then the rest.
        needed.sort(
            key=lambda x: 0 if x == self.baseline_label else 1 if x in self.referenced else 2
        )
        if not self.method_major:
            for label in needed:
                self.ensure(label)
        lossy = any(_is_lossy(self.methods[x]) for x in self.labels)
        if (
            self.baseline_label in self.methods
            and (self.mode == "greedy" or lossy)
            and self.ensure(self.baseline_label) is None
        ):
            self.context.baseline = self.book.of(
                self.baseline_label, self.methods[self.baseline_label]
            )
        records: list[AuditRecord] = []
        pending: list[SamplingTests] = []
        for label in needed:
            method = self.methods[label]
            error = self.ensure(label)
            if error is None and label in self.referenced:
                if self.mode == "greedy":
                    self.book.of(label, method)
                else:
                    self.book.of(f"{label} (independent seeds)", method, 1)
            try:
                if label in self.labels:
                    outcome = self.judge(label)
                    if isinstance(outcome, SamplingTests):
                        pending.append(outcome)
                    elif outcome is not None:
                        records.append(outcome)
            finally:
                if self.method_major:
                    self.plan.finish(label)
        total = sum(len(p.tests) for p in pending)
        per_test = self.options.alpha / max(total, 1)
        records += [p.record(per_test, self.options.alpha) for p in pending]
        return records, total

    def ensure(self, label: str) -> str | None:
        """Prepare ``label`` once; the error that stopped it, or ``None``."""
        if label not in self.prepared:
            try:
                self.plan.prepare(label)
                self.prepared[label] = None
            except SpecbenchError as error:
                self.prepared[label] = str(error)
        return self.prepared[label]

    def judge(self, label: str) -> AuditRecord | SamplingTests | None:
        """``label``'s record (or its sampling tests); ``None`` for rows that are only
        references in a greedy audit."""
        method = self.methods[label]
        if self.prepared[label] is not None:
            return error_record(label, method, self.mode, self.prepared[label] or "")
        if _is_lossy(method):
            return LossyDivergence().audit(label, method, self.context)
        strategy = self.strategy(label, method)
        if strategy is None or isinstance(strategy, AuditRecord):
            return strategy
        return strategy.audit(label, method, self.context)

    def strategy(self, label: str, method: DecodingMethod) -> AuditStrategy | AuditRecord | None:
        """The strategy that tests exact ``method``; a record where there is nothing to test
        (a reference row, a reference that could not start)."""
        reference = reference_method(method)
        reference_label = self.references.get(label)
        if reference is not None and reference_label == label:
            # An engine's own plain decoding: the reference of its speculative rows.
            return reference_record(label, method, self.mode) if self.mode == "sampling" else None
        reference_key = f"{label} (reference)"
        if reference is not None and reference_label is not None:
            reference, reference_key = self.methods[reference_label], reference_label
            if self.prepared.get(reference_label) is not None:
                return error_record(label, method, self.mode, self.prepared[reference_label] or "")
        elif reference is not None:  # not in the preset: start it for the audit
            self.plan.adopt(reference_key, reference)  # closed with the others
        if self.mode == "greedy" and reference is not None:
            # The margin comes from specbench's in-process copy of the target.
            against = f"the engine's own plain decoding ({reference_key})"
            return GreedyIdentity(reference_key, reference, against)
        if self.mode == "greedy":
            if label == self.baseline_label:
                return None
            if self.context.baseline is None:
                raise SpecbenchError(
                    f"greedy audit needs the baseline '{self.baseline_label}' in the preset",
                    "add a baseline method or set runs.baseline to one",
                )
            return GreedyIdentity(self.baseline_label, self.methods[self.baseline_label])
        if reference is None:
            return GoodnessOfFit()
        return TwoSample(reference_key, reference)


def _is_lossy(method: DecodingMethod) -> bool:
    """Whether ``method`` makes no exactness claim to test (lossy, or acceptance simulated)."""
    return not method.exact or method.synthetic


__all__ = ["AuditOptions", "AuditOutcome", "MethodModels", "audit_preset"]
