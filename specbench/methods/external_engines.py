"""Helpers shared by engine plugins (methods whose generation runs in an external engine).

Engines report cumulative counters (vLLM's ``get_metrics()``, llama.cpp's ``/metrics``); a
request's statistics are the counters' change over that request, which is exact when
requests run one at a time. :func:`counter_stats` turns such a change into the
:class:`DecodeStats` every record is built from, so engine rows read like specbench's own.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from specbench.decoding.types import DecodeStats, SpecCounters
from specbench.errors import ModelLoadError, SpecbenchError
from specbench.install_hints import install_extra
from specbench.models.spec_base import ModelSpecBase
from specbench.models.specs import HFModelSpec


def counter_stats(change: SpecCounters, new_tokens: int) -> DecodeStats:
    """The :class:`DecodeStats` of one request from the change of an engine's counters.

    Engines count accepted tokens per draft position but not how often each position was
    reached; position ``i > 0`` is taken as reached whenever position ``i - 1`` was
    accepted, which is exact for fixed-length drafts and an upper bound for n-gram drafts
    that stop early (their acceptance rate per position is then a lower bound; the totals,
    tokens per call and the marginal profile are exact).
    """
    calls = change.target_calls
    if calls is None or calls <= 0:
        # Every target call yields at least one token; accepted drafts add the rest.
        calls = max(new_tokens - change.accepted, 1 if new_tokens else 0)
    stats = DecodeStats(
        steps=calls,
        target_calls=calls,
        proposed=change.draft_tokens,
        accepted=change.accepted,
    )
    accepted_at = list(change.accepted_per_position)
    while accepted_at and accepted_at[-1] == 0:
        accepted_at.pop()
    if change.drafts > 0:
        verified = [change.drafts] + accepted_at[:-1] if accepted_at else [change.drafts]
        stats.position_verified = verified
        stats.position_accepted = accepted_at + [0] * (len(verified) - len(accepted_at))
        stats.rejections = change.drafts - (accepted_at[-1] if accepted_at else 0)
        stats.extra["drafting_steps"] = float(change.drafts)
    return stats


def parse_prometheus(text: str) -> dict[str, list[tuple[dict[str, str], float]]]:
    """Prometheus text exposition (read by ``prometheus_client``'s parser) as ``{sample
    name: [(labels, value), ...]}``; sample names as the text writes them (``..._total``)."""
    from prometheus_client.parser import text_string_to_metric_families

    out: dict[str, list[tuple[dict[str, str], float]]] = {}
    try:
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                out.setdefault(sample.name, []).append((dict(sample.labels), float(sample.value)))
    except ValueError as error:
        raise SpecbenchError(
            f"the engine's /metrics is not Prometheus text ({error})",
            "check the engine's version; specbench reads its counters from /metrics",
        ) from error
    return out


_DRAFTS = "spec_decode_num_drafts"
_DRAFT_TOKENS = "spec_decode_num_draft_tokens"
_ACCEPTED = "spec_decode_num_accepted_tokens"
_PER_POSITION = "spec_decode_num_accepted_tokens_per_pos"


def spec_counters(
    metrics: Mapping[str, Sequence[tuple[Mapping[str, str], float]]],
) -> SpecCounters | None:
    """The speculative counters in parsed ``/metrics`` (:func:`parse_prometheus`), ``None``
    when there are none.

    vLLM exports ``vllm:spec_decode_num_drafts``, ``..._num_draft_tokens``,
    ``..._num_accepted_tokens`` and ``..._num_accepted_tokens_per_pos{position}``;
    llama-server the same schema under ``llamacpp:``. Counters are matched by that schema
    whatever the prefix, and summed over label sets (vLLM labels by model and engine).
    """
    found: dict[str, list[tuple[Mapping[str, str], float]]] = {}
    for sample_name, samples in metrics.items():
        name = sample_name.split(":", 1)[-1].removesuffix("_total")
        if name in (_DRAFTS, _DRAFT_TOKENS, _ACCEPTED, _PER_POSITION):
            found.setdefault(name, []).extend(samples)
    if _DRAFTS not in found:
        return None

    def total(name: str) -> int:
        return int(sum(value for _, value in found.get(name, [])))

    positions: dict[int, int] = {}
    for labels, value in found.get(_PER_POSITION, []):
        for index, count in enumerate(per_position([(labels, value)])):
            positions[index] = positions.get(index, 0) + count
    width = max(positions, default=-1) + 1
    return SpecCounters(
        drafts=total(_DRAFTS),
        draft_tokens=total(_DRAFT_TOKENS),
        accepted=total(_ACCEPTED),
        accepted_per_position=[positions.get(i, 0) for i in range(width)],
    )


def per_position(
    samples: Sequence[tuple[Mapping[str, str], float]], label: str = "position"
) -> list[int]:
    """A counter labelled by position (``position="0"``, ...) as a list by position."""
    values: dict[int, float] = {}
    for labels, value in samples:
        if label in labels and labels[label].isdigit():
            values[int(labels[label])] = value
    width = max(values, default=-1) + 1
    return [int(values.get(i, 0)) for i in range(width)]


def engine_model(spec: ModelSpecBase, role: str, engine: str) -> tuple[HFModelSpec, Any]:
    """The Hugging Face spec an engine builds from, and its catalogue entry (fetched) when it
    names one (else ``None``); one-line errors for other backends and unfetched models."""
    if not isinstance(spec, HFModelSpec):
        raise ModelLoadError(
            f"models.{role}: {engine} needs a Hugging Face model or GGUF, not backend "
            f"{spec.backend}",
            f"set [models.{role}] to backend = 'hf' with a catalogue model, folder or hub id",
        )
    from specbench.models.catalog import CATALOG

    entry = CATALOG.get(spec.model)
    if entry is not None and not entry.fetched:
        raise ModelLoadError(
            f"catalogue model {spec.model} is not fetched",
            f"run `specbench models fetch {spec.model}`",
        )
    return spec, entry


def gguf_path(spec: ModelSpecBase, role: str, local_only: bool = True) -> Path:
    """The GGUF file a model spec names, for engines that read GGUF natively.

    Catalogue models give their fetched file; a local folder gives ``gguf_file`` inside it
    (or its only ``.gguf``); a hub id with ``gguf_file`` is found in (or, with
    ``local_only=False``, downloaded to) the hub cache, through the same code path.
    """
    spec, entry = engine_model(spec, role, "a GGUF engine")
    if entry is not None:
        path: Path = entry.gguf_path()
        return path
    local = Path(spec.model).expanduser()
    if local.is_file() and local.suffix == ".gguf":
        return local
    if local.is_dir():
        if spec.gguf_file is not None:
            path = local / spec.gguf_file
            if not path.is_file():
                raise ModelLoadError(
                    f"models.{role}: {path} does not exist", "check gguf_file and the folder"
                )
            return path
        found = sorted(local.glob("*.gguf"))
        if len(found) == 1:
            return found[0]
        raise ModelLoadError(
            f"models.{role}: {local} holds {len(found)} .gguf files and gguf_file is not set",
            f"set gguf_file in [models.{role}] to the file the engine should read",
        )
    if spec.gguf_file is None:
        raise ModelLoadError(
            f"models.{role}: {spec.model} is not a GGUF model for this engine",
            f"set gguf_file in [models.{role}], or use a catalogue model",
        )
    return _hub_gguf(spec, local_only)


def _hub_gguf(spec: HFModelSpec, local_only: bool) -> Path:
    try:
        from huggingface_hub import hf_hub_download
    except ImportError as error:
        raise ModelLoadError("hub ids need huggingface_hub", install_extra("hf")) from error
    assert spec.gguf_file is not None
    try:
        found: Any = hf_hub_download(
            spec.model, spec.gguf_file, revision=spec.revision, local_files_only=local_only
        )
    except Exception as error:
        raise ModelLoadError(
            f"{spec.model}/{spec.gguf_file} is not in the hub cache ({type(error).__name__})",
            "download it first (huggingface-cli download), or use a local folder",
        ) from error
    return Path(found)
