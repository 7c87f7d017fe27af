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
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch

from specbench.audit.stats import RankedDraw, TestResult, goodness_of_fit, homogeneity, ranked_draws
from specbench.decoding.sampling import SamplingParams, logits_to_probs
from specbench.decoding.types import GenerationRequest
from specbench.errors import SpecbenchError
from specbench.models.base import LanguageModel, common_prefix
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
_AUDIT_SEED_OFFSET = 7_777_777  # audit draws never reuse a run's seeds

Mode = Literal["sampling", "greedy"]


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


@dataclass
class _Draws:
    """One method's generations for one prompt, keyed by draw index."""

    prompt_ids: list[int]
    tokens: list[list[int]] = field(default_factory=list)


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
    preset = resolved.preset
    models, methods = plan.models, plan.methods
    sampling = SamplingParams(
        preset.sampling.temperature, preset.sampling.top_k, preset.sampling.top_p
    )
    mode: Mode = "greedy" if sampling.greedy else "sampling"
    n_tokens = options.tokens or (3 if mode == "sampling" else preset.sampling.max_new_tokens)
    tokenizer = models.tokenizer
    labels = [
        m.label for m in resolved.methods if not options.methods or m.label in options.methods
    ]
    baseline_label = preset.runs.baseline
    stop = frozenset(tokenizer.eos_token_ids)
    n_draws = options.samples if mode == "sampling" else 1

    def request(ids: list[int], index: int, draw: int, stream: int) -> GenerationRequest:
        seed = _AUDIT_SEED_OFFSET + preset.sampling.seed * 1_000_003 + index * 100_003 + draw
        return GenerationRequest(ids, n_tokens, sampling, seed + stream * 7_777_777, stop)

    cache: dict[str, list[_Draws]] = {}

    def draw_all(label: str, method: DecodingMethod, stream: int = 0) -> list[_Draws]:
        """``stream`` 1 draws with other seeds: a two-sample test needs independent
        samples, and an engine may consume its random numbers alike with and without
        speculation."""
        if label in cache:
            return cache[label]
        out = []
        for index, ids in enumerate(encoded):
            draws = _Draws(ids)
            for draw in range(n_draws):
                if draw % 100 == 0:
                    where = f"{label}: prompt {index + 1}/{len(encoded)}"
                    report(where + (f", draw {draw}/{n_draws}" if n_draws > 1 else ""))
                result = method.generate(request(ids, index, draw, stream))
                draws.tokens.append(list(result.tokens))
            out.append(draws)
        cache[label] = out
        return out

    def tie_margin() -> float:
        if options.tie_margin is not None:
            return options.tie_margin
        dtype = str(models.target.describe().get("dtype", ""))
        return TIE_MARGINS.get(dtype, DEFAULT_TIE_MARGIN)

    # Methods measured against a plain-decoding row of their own (engines), by label.
    references = {
        label: reference
        for label, reference in plan.references.items()
        if own_baseline(methods[label]) is not None
    }
    referenced = {r for label in labels if (r := references.get(label)) and r != label}
    needed = labels + sorted(referenced - set(labels))
    # Like the runner: the baseline first, then references (their draws are cached for the
    # rows that need them), then the rest.
    needed.sort(key=lambda x: 0 if x == baseline_label else 1 if x in referenced else 2)
    method_major = preset.runs.order != "prompt"  # one engine alive at a time
    prepared: dict[str, str | None] = {}

    def ensure(label: str) -> str | None:
        if label not in prepared:
            try:
                plan.prepare(label)
                prepared[label] = None
            except SpecbenchError as error:
                prepared[label] = str(error)
        return prepared[label]

    if not method_major:
        for label in needed:
            ensure(label)

    baseline_draws: list[_Draws] | None = None
    wants_baseline = mode == "greedy" or _lossy_present(labels, methods)
    if baseline_label in methods and wants_baseline and ensure(baseline_label) is None:
        baseline_draws = draw_all(baseline_label, methods[baseline_label])

    pending: list[tuple[str, DecodingMethod, list[TestResult], str]] = []
    records: list[AuditRecord] = []

    def audit_one(label: str) -> None:
        method = methods[label]
        if prepared[label] is not None:
            records.append(_error_record(label, method, mode, prepared[label] or ""))
            return
        if not method.exact or method.synthetic:
            draws = draw_all(label, method)
            records.append(_lossy_record(label, method, draws, baseline_draws, n_tokens))
            return
        reference = reference_method(method)
        reference_label = references.get(label)
        if reference is not None and reference_label == label:
            # An engine's own plain decoding: the reference of its speculative rows.
            if mode == "sampling":
                records.append(_reference_record(label, method, mode))
            return
        reference_key = f"{label} (reference)"
        if reference is not None and reference_label is not None:
            reference, reference_key = methods[reference_label], reference_label
            if prepared.get(reference_label) is not None:
                records.append(_error_record(label, method, mode, prepared[reference_label] or ""))
                return
        elif reference is not None:  # not in the preset: start it for the audit
            plan.adopt(reference_key, reference)  # closed with the others
        if mode == "greedy" and reference is not None:
            draws = draw_all(label, method)
            reference_draws = draw_all(reference_key, reference)
            # The margin comes from specbench's in-process copy of the target.
            against = f"the engine's own plain decoding ({reference_key})"
            record = _greedy_record(
                label, method, draws, reference_draws, models.target, tie_margin(), against
            )
            records.append(record)
            return
        if mode == "greedy":
            if label == baseline_label:
                return
            if baseline_draws is None:
                raise SpecbenchError(
                    f"greedy audit needs the baseline '{baseline_label}' in the preset",
                    "add a baseline method or set runs.baseline to one",
                )
            draws = draw_all(label, method)
            records.append(
                _greedy_record(label, method, draws, baseline_draws, models.target, tie_margin())
            )
            return
        draws = draw_all(label, method)
        if reference is None:
            report(f"{label}: teacher-forcing the target")
            tests = _fit_tests(label, draws, models.target, sampling, n_tokens)
            kind = "chi-square goodness of fit vs the target's exact distribution"
        else:
            reference_draws = draw_all(f"{reference_key} (independent seeds)", reference, 1)
            tests = _homogeneity_tests(label, draws, reference_draws, n_tokens)
            kind = "two-sample chi-square vs the same engine's plain decoding"
        pending.append((label, method, tests, kind))

    for label in needed:
        method = methods[label]
        error = ensure(label)
        if error is None and label in referenced:
            if mode == "greedy":
                draw_all(label, method)
            else:
                draw_all(f"{label} (independent seeds)", method, 1)
        try:
            if label in labels:
                audit_one(label)
        finally:
            if method_major:
                plan.finish(label)

    total_tests = sum(len(tests) for _, _, tests, _ in pending)
    per_test = options.alpha / max(total_tests, 1)
    for label, method, tests, kind in pending:
        records.append(_sampling_record(label, method, tests, kind, per_test, options.alpha))

    order = {label: i for i, label in enumerate(labels)}
    records.sort(key=lambda r: order.get(r.method, len(order)))
    header = run_header(resolved, models, session=1)
    for record in records:
        record.run_id = header.run_id
    with RecordWriter(output) as writer:
        writer.write(header)
        for record in records:
            writer.write(record)
        writer.write(run_end_record(header.run_id, 1, "finished"))
    groups: dict[tuple[tuple[int, ...], ...], list[str]] = {}
    for label in labels:
        if label in cache:
            key = tuple(tuple(tokens) for prompt in cache[label] for tokens in prompt.tokens)
            groups.setdefault(key, []).append(label)
    # Greedy outputs are meant to be identical; sampled ones only are when seeds coincide.
    identical = [g for g in groups.values() if len(g) > 1] if mode == "sampling" else []
    return AuditOutcome(
        output, records, mode, total_tests, len(encoded), n_draws, n_tokens, identical
    )


def _lossy_present(labels: Sequence[str], methods: dict[str, DecodingMethod]) -> bool:
    return any(not methods[label].exact or methods[label].synthetic for label in labels)


def _fit_tests(
    label: str,
    draws: Sequence[_Draws],
    target: LanguageModel,
    sampling: SamplingParams,
    n_tokens: int,
) -> list[TestResult]:
    """Per prompt and position: the draws against the target's teacher-forced conditionals."""
    tests = []
    for prompt_index, prompt in enumerate(draws):
        by_position = _rank_under_target(prompt, target, sampling, n_tokens)
        for position in range(n_tokens):
            name = f"prompt {prompt_index + 1}, position {position}"
            result = goodness_of_fit(by_position.get(position, []), name)
            if result is not None:
                tests.append(result)
    return tests


def _rank_under_target(
    prompt: _Draws, target: LanguageModel, sampling: SamplingParams, n_tokens: int
) -> dict[int, list[RankedDraw]]:
    """Each draw's token at each position, ranked under p(. | prompt, its prefix).

    Draws sharing a prefix share one conditional, so each distinct prefix is scored once;
    one target call on a draw's whole prefix scores all of its positions.
    """
    groups: dict[tuple[int, ...], list[int]] = defaultdict(list)
    for tokens in prompt.tokens:
        for position in range(min(len(tokens), n_tokens)):
            groups[tuple(tokens[:position])].append(tokens[position])
    done: set[tuple[int, ...]] = set()
    out: dict[int, list[RankedDraw]] = defaultdict(list)
    session = target.new_session()
    with torch.inference_mode():
        # Longest prefixes first: one call covers all of their shorter prefixes.
        for prefix in sorted(groups, key=len, reverse=True):
            if prefix in done:
                continue
            sequence = prompt.prompt_ids + list(prefix)
            logits = session.logits_from(sequence, len(prompt.prompt_ids) - 1)
            probs = logits_to_probs(logits, sampling)
            for length in range(len(prefix) + 1):
                key = prefix[:length]
                if key in done or key not in groups:
                    continue
                done.add(key)
                out[length].extend(ranked_draws(probs[length], groups[key]))
    return out


def _homogeneity_tests(
    label: str, draws: Sequence[_Draws], reference: Sequence[_Draws], n_tokens: int
) -> list[TestResult]:
    tests = []
    for prompt_index, (ours, theirs) in enumerate(zip(draws, reference, strict=True)):
        for position in range(n_tokens):
            a = [tuple(t[: position + 1]) for t in ours.tokens if len(t) > position]
            b = [tuple(t[: position + 1]) for t in theirs.tokens if len(t) > position]
            name = f"prompt {prompt_index + 1}, prefixes to position {position}"
            result = homogeneity(a, b, name)
            if result is not None:
                tests.append(result)
    return tests


def _record(label: str, method: DecodingMethod, **fields: Any) -> AuditRecord:
    """An audit record of ``label``; the run id is filled in when the file is written."""
    return AuditRecord(run_id="", method=label, method_name=method.name, **fields)


def _sampling_record(
    label: str,
    method: DecodingMethod,
    tests: Sequence[TestResult],
    kind: str,
    per_test: float,
    family: float,
) -> AuditRecord:
    details = [
        {
            "test": t.test,
            "statistic": t.statistic,
            "df": t.df,
            "p_value": t.p_value,
            "samples": t.samples,
            "detail": t.detail,
            **t.bins,
        }
        for t in tests
    ]
    if not tests:
        return _record(
            label,
            method,
            exact=True,
            mode="sampling",
            test=kind,
            verdict="error",
            detail="nothing to test: every conditional was too concentrated "
            "(raise the temperature or --samples)",
        )
    worst = min(tests, key=lambda t: t.p_value)
    failed = [t for t in tests if t.p_value < per_test]
    detail = f"{len(tests)} tests; smallest p at {worst.test} ({worst.detail})"
    if failed:
        detail = (
            f"{len(failed)} of {len(tests)} tests below {per_test:.2g}; "
            f"worst: {worst.test} ({worst.detail})"
        )
    return _record(
        label,
        method,
        exact=True,
        mode="sampling",
        test=kind,
        statistic=worst.statistic,
        df=worst.df,
        p_value=worst.p_value,
        alpha=per_test,
        family_alpha=family,
        verdict="fail" if failed else "pass",
        detail=detail,
        tests=details,
    )


def _greedy_record(
    label: str,
    method: DecodingMethod,
    draws: Sequence[_Draws],
    baseline: Sequence[_Draws],
    target: LanguageModel | None,
    tie_margin: float,
    against: str = "the baseline",
) -> AuditRecord:
    """Token-for-token comparison; a difference is a near-tie or a bug by the target's top-2
    margin where it starts (``target=None``, an external engine: the margin is unknown and
    the difference fails, with its position)."""
    tests: list[dict[str, Any]] = []
    verdicts = []
    for index, (ours, theirs) in enumerate(zip(draws, baseline, strict=True)):
        a, b = ours.tokens[0], theirs.tokens[0]
        if a == b:
            tests.append({"test": f"prompt {index + 1}", "identical": True, "tokens": len(a)})
            verdicts.append("pass")
            continue
        position = common_prefix(a, b)
        if target is None:
            verdicts.append("fail")
            tests.append(
                {
                    "test": f"prompt {index + 1}",
                    "identical": False,
                    "first_difference": position,
                    "margin": None,
                    "near_tie": None,
                }
            )
            continue
        margin = _top2_margin(target, theirs.prompt_ids + b[:position])
        near = margin <= tie_margin
        verdicts.append("near-tie" if near else "fail")
        tests.append(
            {
                "test": f"prompt {index + 1}",
                "identical": False,
                "first_difference": position,
                "margin": margin,
                "near_tie": near,
            }
        )
    worst = next((t for t in tests if t.get("near_tie") is False), None) or next(
        (t for t in tests if not t["identical"]), None
    )
    identical = sum(bool(t["identical"]) for t in tests)
    verdict = "fail" if "fail" in verdicts else "near-tie" if "near-tie" in verdicts else "pass"
    detail = f"{identical}/{len(tests)} outputs identical to {against}"
    if worst is not None:
        kind = (
            "the margin there is unknown (no in-process target): a near-tie cannot be told "
            "from a bug"
            if worst["margin"] is None
            else f"numerical near-tie (margin {worst['margin']:.3g} <= {tie_margin:g}"
            f"{'' if against == 'the baseline' else ' on the in-process target'})"
            if worst["near_tie"]
            else f"divergence at a clear choice (margin {worst['margin']:.3g} > "
            f"{tie_margin:g}): a bug"
        )
        detail += (
            f"; {worst['test']}: first difference at token {worst['first_difference']}, {kind}"
        )
    return _record(
        label,
        method,
        exact=True,
        mode="greedy",
        test=f"token-for-token equality with {against}",
        statistic=None if worst is None or worst["margin"] is None else float(worst["margin"]),
        verdict=verdict,
        detail=detail,
        tests=tests,
    )


def _top2_margin(target: LanguageModel, sequence: list[int]) -> float:
    """Top-1 minus top-2 logit of the target after ``sequence`` (one-row forward)."""
    with torch.inference_mode():
        logits = target.new_session().logits_from(sequence, len(sequence) - 1)[-1]
    top = torch.topk(logits.float(), 2).values
    return float(top[0] - top[1])


def _lossy_record(
    label: str,
    method: DecodingMethod,
    draws: Sequence[_Draws],
    baseline: Sequence[_Draws] | None,
    n_tokens: int,
) -> AuditRecord:
    divergence = None
    detail = "lossy, not audited"
    if baseline is not None:
        differing = compared = 0
        for ours, theirs in zip(draws, baseline, strict=True):
            for a, b in zip(ours.tokens, theirs.tokens, strict=True):
                length = max(len(a), len(b))
                compared += length
                differing += sum(
                    1 for i in range(length) if i >= len(a) or i >= len(b) or a[i] != b[i]
                )
        divergence = differing / compared if compared else 0.0
        detail += f"; {100 * divergence:.1f}% of {compared} tokens differ from the baseline"
    return _record(
        label,
        method,
        exact=False,
        mode="lossy",
        test="divergence from the baseline (same prompts and seeds)",
        verdict="lossy",
        detail=detail,
        divergence=divergence,
    )


def _reference_record(label: str, method: DecodingMethod, mode: Mode) -> AuditRecord:
    return _record(
        label,
        method,
        exact=method.exact,
        mode=mode,
        test="none: the reference the engine's speculative rows are compared with",
        verdict="reference",
        detail="an engine's plain decoding; its speculative rows are tested against it",
    )


def _error_record(label: str, method: DecodingMethod, mode: Mode, error: str) -> AuditRecord:
    return _record(
        label,
        method,
        exact=method.exact,
        mode=mode if method.exact else "lossy",
        test="could not start",
        verdict="error",
        detail=error,
    )


__all__ = ["AuditOptions", "AuditOutcome", "MethodModels", "audit_preset"]
