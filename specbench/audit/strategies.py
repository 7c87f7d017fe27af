"""The audit's strategies: one per kind of claim a method makes, each drawing what it needs
and turning it into an :class:`~specbench.records.AuditRecord`.

* :class:`GreedyIdentity` (temperature 0, exact methods): token-for-token equality with the
  baseline, or with an engine's own plain decoding. At the first difference the in-process
  target's top-2 logit margin tells a numerical near-tie from a bug.
* :class:`GoodnessOfFit` (sampling, exact in-process methods): each position's draws against
  the target's exact conditional, teacher-forced through the same logits processing.
* :class:`TwoSample` (sampling, methods whose output does not come from the in-process target:
  engines and servers): draws against the same engine's plain decoding on independent seeds.
* :class:`LossyDivergence` (lossy or synthetic methods): not a test; the share of tokens that
  differ from the baseline on the same prompts and seeds.

The sampling strategies return their tests (:class:`SamplingTests`) rather than a verdict:
all tests of one audit share a family-wise alpha (Bonferroni), known once every method ran.
"""

from __future__ import annotations

import functools
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol

import torch

from specbench.audit.draws import DrawBook, Draws
from specbench.audit.stats import RankedDraw, TestResult, goodness_of_fit, homogeneity, ranked_draws
from specbench.decoding.sampling import SamplingParams, logits_to_probs
from specbench.models.base import LanguageModel, common_prefix
from specbench.plugins import DecodingMethod
from specbench.records import AuditRecord

Mode = Literal["sampling", "greedy"]


@dataclass
class AuditContext:
    """What every strategy of one audit shares."""

    mode: Mode
    sampling: SamplingParams
    tokens: int
    book: DrawBook
    #: The in-process target (teacher forcing, top-2 margins), loaded where a strategy needs it.
    target: Callable[[], LanguageModel]
    #: The largest top-2 margin that counts as a numerical near-tie.
    tie_margin: Callable[[], float]
    #: The baseline's draws, where the audit made them (greedy audits, lossy methods).
    baseline: list[Draws] | None
    report: Callable[[str], None]


@dataclass
class SamplingTests:
    """A sampling strategy's tests of one method, judged once the family's size is known."""

    label: str
    method: DecodingMethod
    tests: list[TestResult]
    kind: str

    def record(self, per_test: float, family: float) -> AuditRecord:
        """The verdict at ``per_test`` alpha (``family`` the audit's family-wise alpha)."""
        return _sampling_record(self.label, self.method, self.tests, self.kind, per_test, family)


class AuditStrategy(Protocol):
    """One way of testing a method's claim."""

    def audit(
        self, label: str, method: DecodingMethod, context: AuditContext
    ) -> AuditRecord | SamplingTests:
        """Draw what the test needs and judge ``method`` (listed as ``label``)."""
        ...


@dataclass
class GreedyIdentity:
    """Token-for-token equality with ``reference``'s draws (key ``reference_key``)."""

    reference_key: str
    reference: DecodingMethod
    against: str = "the baseline"

    def audit(self, label: str, method: DecodingMethod, context: AuditContext) -> AuditRecord:
        draws = context.book.of(label, method)
        reference = context.book.of(self.reference_key, self.reference)
        return _greedy_record(
            label,
            method,
            draws,
            reference,
            context.target(),
            context.tie_margin(),
            self.against,
        )


class GoodnessOfFit:
    """Chi-square goodness of fit of each position against the target's exact conditional."""

    kind = "chi-square goodness of fit vs the target's exact distribution"

    def audit(self, label: str, method: DecodingMethod, context: AuditContext) -> SamplingTests:
        draws = context.book.of(label, method)
        context.report(f"{label}: teacher-forcing the target")
        tests = _fit_tests(draws, context.target(), context.sampling, context.tokens)
        return SamplingTests(label, method, tests, self.kind)


@dataclass
class TwoSample:
    """Two-sample chi-square of each prefix against ``reference`` on independent seeds."""

    reference_key: str
    reference: DecodingMethod
    kind = "two-sample chi-square vs the same engine's plain decoding"

    def audit(self, label: str, method: DecodingMethod, context: AuditContext) -> SamplingTests:
        draws = context.book.of(label, method)
        reference = context.book.of(f"{self.reference_key} (independent seeds)", self.reference, 1)
        tests = _homogeneity_tests(draws, reference, context.tokens)
        return SamplingTests(label, method, tests, self.kind)


class LossyDivergence:
    """No test: the share of tokens that differ from the baseline's on the same seeds."""

    def audit(self, label: str, method: DecodingMethod, context: AuditContext) -> AuditRecord:
        draws = context.book.of(label, method)
        return _lossy_record(label, method, draws, context.baseline)


def _fit_tests(
    draws: Sequence[Draws],
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
    prompt: Draws, target: LanguageModel, sampling: SamplingParams, n_tokens: int
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
    draws: Sequence[Draws], reference: Sequence[Draws], n_tokens: int
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
    record = functools.partial(_record, label, method, exact=True, mode="sampling", test=kind)
    if not tests:
        return record(
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
    return record(
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
    draws: Sequence[Draws],
    baseline: Sequence[Draws],
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
    draws: Sequence[Draws],
    baseline: Sequence[Draws] | None,
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


def reference_record(label: str, method: DecodingMethod, mode: Mode) -> AuditRecord:
    return _record(
        label,
        method,
        exact=method.exact,
        mode=mode,
        test="none: the reference the engine's speculative rows are compared with",
        verdict="reference",
        detail="an engine's plain decoding; its speculative rows are tested against it",
    )


def error_record(label: str, method: DecodingMethod, mode: Mode, error: str) -> AuditRecord:
    return _record(
        label,
        method,
        exact=method.exact,
        mode=mode if method.exact else "lossy",
        test="could not start",
        verdict="error",
        detail=error,
    )
