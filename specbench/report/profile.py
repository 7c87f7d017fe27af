"""The acceptance profile in the field's shape: NVIDIA Model-Optimizer's
``speculation_profile.json`` (schema 1.0), so a specbench run can be compared with
vLLM / SGLang / AIPerf tooling.

Both per-position vectors are published, named as that schema names them:

* ``conditional_accept_rates[i]``: P(draft i + 1 accepted | the first i were), our
  ``position_acceptance`` (accepted at i / reached i);
* ``marginal_accept_rates[i]``: P(the first i + 1 drafts all accepted), our
  ``position_marginal`` (accepted at i / verification steps).

``mean_accept_length`` is the per-step mean, 1 + sum(marginal); the per-request mean is
given next to it because the two differ materially on short or uneven requests.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from typing import Any

from specbench.plugins import discover_methods
from specbench.records import RunHeader, SampleRecord, SummaryRecord
from specbench.report.summary import summarize

SCHEMA_VERSION = "1.0"
#: Tolerance of the AL = 1 + sum(marginal) check against tokens per target call.
AL_TOLERANCE = 0.02


def accept_length_model(method_name: str) -> str:
    """``chain_analytic`` for methods whose k-draft is a prefix of their (k+1)-draft (the
    profile then extrapolates over k), ``measured_per_k`` otherwise or when unknown."""
    info = discover_methods().methods.get(method_name)
    return info.cls.accept_length_model if info is not None else "measured_per_k"


def length_histogram(samples: Sequence[SampleRecord]) -> dict[str, int]:
    """How many steps emitted each number of tokens (accepted drafts + 1), keyed as strings."""
    steps = sum(s.steps for s in samples)
    width = max((len(s.position_accepted) for s in samples), default=0)
    at_least = [steps] + [
        sum(s.position_accepted[i] for s in samples if i < len(s.position_accepted))
        for i in range(width)
    ]
    histogram = {}
    for accepted in range(len(at_least)):
        following = at_least[accepted + 1] if accepted + 1 < len(at_least) else 0
        count = at_least[accepted] - following
        if count:
            histogram[str(accepted + 1)] = count
    return histogram


def consistency(summary: SummaryRecord) -> dict[str, Any]:
    """AL = 1 + sum(marginal) against measured tokens per target call."""
    implied = summary.acceptance_length or 1.0
    measured = summary.avg_tokens_per_step
    delta = abs(implied - measured)
    return {
        "implied_mean_accept_length": round(implied, 6),
        "reported_mean_accept_length": round(measured, 6),
        "abs_delta": round(delta, 6),
        "tolerance": AL_TOLERANCE,
        "passed": delta <= AL_TOLERANCE,
    }


def _monotonicity(marginal: Sequence[float]) -> dict[str, Any]:
    violations = [
        {"position": i, "value": marginal[i], "previous": marginal[i - 1]}
        for i in range(1, len(marginal))
        if marginal[i] > marginal[i - 1] + 1e-9
    ]
    return {"passed": not violations, "violations": violations}


def build_profile(
    summary: SummaryRecord,
    samples: Sequence[SampleRecord],
    header: RunHeader,
    per_category: dict[str, SummaryRecord] | None = None,
) -> dict[str, Any]:
    """One method's ``speculation_profile.json`` payload (schema 1.0)."""
    k = len(summary.position_marginal)
    conditional = [round(v or 0.0, 6) for v in summary.position_acceptance]
    marginal = [round(v, 6) for v in summary.position_marginal]
    al = round(summary.acceptance_length or 1.0, 6)
    sampling = header.preset.get("sampling", {})
    models = header.models
    return {
        "schema_version": SCHEMA_VERSION,
        "measured": True,
        "method": summary.method_name,
        "label": summary.method,
        "draft_checkpoint": models.get("draft", {}).get("name"),
        "target_model": models.get("target", {}).get("name"),
        "num_speculative_tokens": k,
        "block_size": None,
        "max_supported_k": k,
        "verification_method": "longest_prefix",
        "conditional_accept_rates": conditional,
        "marginal_accept_rates": marginal,
        "mean_accept_length": al,
        "mean_accept_length_per_request": _round(summary.acceptance_length_request_mean),
        "accept_length_model": accept_length_model(summary.method_name),
        "accept_length_by_k": {str(k): al},
        "acceptance_length_histogram": length_histogram(samples),
        "per_category": {
            category: {
                "mean_accept_length": _round(s.acceptance_length),
                "mean_accept_length_per_request": _round(s.acceptance_length_request_mean),
                "samples": s.samples,
            }
            for category, s in (per_category or {}).items()
        }
        or None,
        "measurement_conditions": {
            "tool": "specbench",
            "specbench": header.environment.get("specbench"),
            "preset": header.preset_name,
            "prompts": header.preset.get("prompts", {}).get("source"),
            "temperature": sampling.get("temperature"),
            "top_k": sampling.get("top_k"),
            "top_p": sampling.get("top_p"),
            "max_new_tokens": sampling.get("max_new_tokens"),
            "concurrency": summary.batch_size,
            "device": models.get("target", {}).get("device"),
            "samples": summary.samples,
            "steps": sum(s.steps for s in samples),
            "tokens_per_target_call": round(summary.avg_tokens_per_step, 6),
            "tokens_per_target_call_per_request": _round(summary.tokens_per_step_request_mean),
        },
        "validation": {
            "mean_consistency": consistency(summary),
            "marginal_monotonicity": _monotonicity(marginal),
        },
    }


def build_profiles(
    summaries: Sequence[SummaryRecord],
    samples: Sequence[SampleRecord],
    header: RunHeader,
) -> dict[str, dict[str, Any]]:
    """Profiles of every method that drafted anything, keyed by label."""
    by_method: dict[str, list[SampleRecord]] = defaultdict(list)
    by_cell: dict[tuple[str, str], list[SampleRecord]] = defaultdict(list)
    for s in samples:
        by_method[s.method].append(s)
        if s.category is not None:
            by_cell[(s.method, s.category)].append(s)
    profiles = {}
    for summary in summaries:
        if not summary.position_marginal:
            continue
        categories = {}
        for (method, category), group in sorted(by_cell.items()):
            if method == summary.method:
                categories[category] = summarize(group, None, header.run_id, intervals=False)[0]
        profiles[summary.method] = build_profile(
            summary, by_method[summary.method], header, categories
        )
    return profiles


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 6)
