"""Config files in the styles of other tools, turned into specbench presets.

Users arrive with the files they wrote for what they used before. Three shapes are known:

* a vLLM study config: ``model``, ``generation: {max_tokens, temperature, top_p}``,
  ``engine: {tensor_parallel_size, gpu_memory_utilization, ...}``;
* a draft/target config (as speculative-decoding repositories write them):
  ``target_model``, ``draft_model``, ``k``, ``max_new_tokens``, ``dataset: {path, name}``,
  ``batch_size``, ``device``, ``quantized``;
* a JSON file split into ``models``, ``methods`` and ``experiments`` (each experiment names
  its target, draft and methods by key).

:func:`recognise` says which shape a parsed file has (validation uses it to point at
``specbench presets import`` instead of listing every unknown key); :func:`import_config`
maps it. Every field that has no specbench equivalent comes back in ``unmapped`` with the
reason, to be written as a comment next to the preset, never dropped silently.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from specbench.prompts.sources import BUILTIN_SETS

__all__ = ["ImportedPreset", "import_config", "recognise"]


@dataclass
class ImportedPreset:
    """One preset made from a foreign config; ``unmapped`` lines become its comments."""

    name: str
    preset: dict[str, Any]
    unmapped: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class _Shape:
    description: str
    matches: Callable[[Mapping[str, Any]], bool]
    convert: Callable[[Mapping[str, Any], str, bool], list[ImportedPreset]]


def recognise(raw: Mapping[str, Any]) -> str | None:
    """What a non-specbench config looks like (``"a vLLM study config"``), or ``None``."""
    shape = _shape_of(raw)
    return shape.description if shape else None


def import_config(
    raw: Mapping[str, Any], name: str, vllm_installed: bool = False
) -> tuple[str, list[ImportedPreset]]:
    """The shape's description and the presets it maps to (one per experiment).

    ``vllm_installed`` maps engine settings onto the vLLM plugin's method; without it they
    are listed as unmapped and specbench's own baseline runs instead."""
    shape = _shape_of(raw)
    if shape is None:
        raise ValueError("not a known config shape")
    return shape.description, shape.convert(raw, name, vllm_installed)


def _shape_of(raw: Mapping[str, Any]) -> _Shape | None:
    if "record" in raw or (isinstance(raw.get("models"), dict) and "target" in raw["models"]):
        return None  # a specbench preset (or results), however broken
    return next((shape for shape in _SHAPES if shape.matches(raw)), None)


# ----------------------------------------------------------------------------- vLLM study


def _is_vllm_study(raw: Mapping[str, Any]) -> bool:
    return isinstance(raw.get("model"), str) and any(
        isinstance(raw.get(key), dict) for key in ("generation", "engine", "sampling_params")
    )


def _from_vllm_study(raw: Mapping[str, Any], name: str, vllm: bool) -> list[ImportedPreset]:
    out = ImportedPreset(name, {"name": name, "models": {"target": _hf_model(raw["model"])}})
    unmapped = out.unmapped
    generation = dict(raw.get("generation") or raw.get("sampling_params") or {})
    out.preset["sampling"] = _sampling(generation)
    _rest(generation, set(_SAMPLING), "generation.", unmapped)
    engine = dict(raw.get("engine") or {})
    speculative = raw.get("speculative_config") or engine.pop("speculative_config", None)
    if vllm:
        params = {key: engine.pop(key) for key in list(engine) if key in _VLLM_PARAMS}
        if engine:
            params["engine_args"] = engine  # passed to vLLM's LLM(...) as written
        methods: list[dict[str, Any]] = [{"name": "vllm", "label": "vllm", "params": params}]
        if isinstance(speculative, dict):
            methods.append(
                {"name": "vllm", "label": "vllm-speculative",
                 "params": {**params, "speculative": speculative}}
            )  # fmt: skip
        out.preset["methods"] = methods
        out.preset["runs"] = {"baseline": "vllm"}
    else:
        out.preset["methods"] = [{"name": "baseline"}]
        for key, value in engine.items():
            unmapped.append(
                f"engine.{key} = {value!r}: a vLLM engine setting; install the vLLM plugin "
                "(plugins/specbench-vllm) and import again to run on vLLM"
            )
        if speculative is not None:
            unmapped.append(f"speculative_config = {speculative!r}: needs the vLLM plugin")
    out.preset["prompts"] = _prompts(raw, unmapped)
    known = {"model", "generation", "sampling_params", "engine", "speculative_config"}
    _rest(raw, known | _PROMPT_KEYS, "", unmapped)
    return [out]


_VLLM_PARAMS = (
    "dtype",
    "enforce_eager",
    "max_model_len",
    "gpu_memory_utilization",
    "tensor_parallel_size",
    "seed",
)


# ----------------------------------------------------------------------------- draft/target


def _is_draft_target(raw: Mapping[str, Any]) -> bool:
    return isinstance(raw.get("target_model"), str) or isinstance(raw.get("draft_model"), str)


def _from_draft_target(raw: Mapping[str, Any], name: str, vllm: bool) -> list[ImportedPreset]:
    out = ImportedPreset(name, {"name": name})
    unmapped = out.unmapped
    models: dict[str, Any] = {}
    for role in ("target", "draft"):
        if isinstance(raw.get(f"{role}_model"), str):
            models[role] = _hf_model(
                raw[f"{role}_model"], raw, unmapped if role == "target" else []
            )
    if "target" not in models:
        unmapped.append("no target_model: the draft was made the target")
        models = {"target": models.pop("draft")}
    out.preset["models"] = models
    batch = raw.get("batch_size")
    common = {"batch_size": batch} if isinstance(batch, int) and batch > 1 else {}
    methods: list[dict[str, Any]] = [{"name": "baseline", "params": dict(common)}]
    if "draft" in models:
        k = raw.get("k", raw.get("num_speculative_tokens", raw.get("gamma")))
        params = {**common, **({"k": k} if isinstance(k, int) else {})}
        methods.append({"name": "speculative", "params": params})
    out.preset["methods"] = methods
    out.preset["sampling"] = _sampling(raw)
    if "max_length" in raw:
        unmapped.append(
            f"max_length = {raw['max_length']!r}: specbench limits the answer, not prompt plus "
            "answer; sampling.max_new_tokens does that"
        )
    out.preset["prompts"] = _prompts(raw, unmapped)
    known = {"target_model", "draft_model", "k", "num_speculative_tokens", "gamma", "max_length"}
    known |= {"batch_size", "device", "quantized", "dtype"}
    _rest(raw, known | _PROMPT_KEYS | set(_SAMPLING), "", unmapped)
    return [out]


# ----------------------------------------------------------------------------- split JSON


def _is_split(raw: Mapping[str, Any]) -> bool:
    return isinstance(raw.get("experiments"), list) and isinstance(raw.get("models"), dict)


def _from_split(raw: Mapping[str, Any], name: str, vllm: bool) -> list[ImportedPreset]:
    models: Mapping[str, Any] = raw.get("models") or {}
    methods = raw.get("methods") or {}
    if isinstance(methods, list):
        methods = {str(m.get("name", i)): m for i, m in enumerate(methods) if isinstance(m, dict)}
    presets = []
    for index, experiment in enumerate(raw["experiments"]):
        if not isinstance(experiment, dict):
            continue
        label = _slug(str(experiment.get("name", f"{name}-{index + 1}")))
        out = ImportedPreset(label, {"name": label})
        unmapped = out.unmapped
        chosen: dict[str, Any] = {}
        for role in ("target", "draft"):
            key = experiment.get(role, experiment.get(f"{role}_model"))
            if key is None:
                continue
            entry = models.get(key, key)  # a key of "models", or the model itself
            if isinstance(entry, dict):
                source = entry.get("path") or entry.get("model") or entry.get("name") or key
                chosen[role] = _hf_model(str(source), entry, unmapped, f"models.{key}")
            else:
                chosen[role] = _hf_model(str(entry))
        if "target" not in chosen:
            unmapped.append(f"experiments[{index}] names no target: models were not mapped")
            continue
        out.preset["models"] = chosen
        out.preset["methods"] = [
            _method(methods.get(m, {"type": m}), str(m), unmapped)
            for m in experiment.get("methods", ["baseline"])
        ]
        out.preset["sampling"] = _sampling(experiment)
        out.preset["prompts"] = _prompts(experiment, unmapped)
        known = {"name", "target", "draft", "target_model", "draft_model", "methods"}
        _rest(experiment, known | _PROMPT_KEYS | set(_SAMPLING), f"experiments[{index}].", unmapped)
        presets.append(out)
    return presets


def _method(entry: Mapping[str, Any], key: str, unmapped: list[str]) -> dict[str, Any]:
    kind = str(entry.get("type", entry.get("method", entry.get("name", key))))
    aliases = {"sps": "speculative", "spec": "speculative", "autoregressive": "baseline",
               "ar": "baseline", "pld": "prompt-lookup", "vanilla": "baseline"}  # fmt: skip
    params = {k: v for k, v in entry.items() if k not in ("type", "method", "name")}
    if "gamma" in params:
        params["k"] = params.pop("gamma")
    return {"name": aliases.get(kind, kind), "label": _slug(key), "params": params}


_SHAPES = (
    _Shape("a JSON file of models, methods and experiments", _is_split, _from_split),
    _Shape("a vLLM study config", _is_vllm_study, _from_vllm_study),
    _Shape("a draft/target config", _is_draft_target, _from_draft_target),
)


# ----------------------------------------------------------------------------- pieces

_SAMPLING = {
    "max_tokens": "max_new_tokens",
    "max_new_tokens": "max_new_tokens",
    "temperature": "temperature",
    "top_p": "top_p",
    "top_k": "top_k",
    "seed": "seed",
}
_PROMPT_KEYS = {"dataset", "prompts", "data", "num_prompts", "limit"}


def _sampling(source: Mapping[str, Any]) -> dict[str, Any]:
    """The sampling fields among ``source``'s keys (the caller reports the others)."""
    out: dict[str, Any] = {}
    for key, value in source.items():
        if key not in _SAMPLING:
            continue
        if key == "top_k" and isinstance(value, int) and value <= 0:
            continue  # vLLM's -1 and HF's 0 mean no top-k, as specbench's default does
        out[_SAMPLING[key]] = value
    return out


def _hf_model(
    source: str,
    options: Mapping[str, Any] | None = None,
    unmapped: list[str] | None = None,
    where: str = "",
) -> dict[str, Any]:
    model: dict[str, Any] = {"backend": "hf", "model": source}
    options = options or {}
    notes = unmapped if unmapped is not None else []
    device = options.get("device")
    if isinstance(device, str):
        model["device"] = device if re.fullmatch(r"auto|cpu|mps|cuda(:\d+)?", device) else "auto"
    dtype = options.get("dtype", options.get("torch_dtype"))
    aliases = {"bf16": "bfloat16", "fp16": "float16", "half": "float16", "fp32": "float32"}
    if isinstance(dtype, str):
        model["dtype"] = aliases.get(dtype, dtype)
    quantized = options.get("quantized", options.get("quantization"))
    if quantized in (True, "4bit", "nf4", "bnb-4bit"):
        model["quantization"] = {"method": "bnb-4bit"}
    elif quantized in ("8bit", "int8", "bnb-8bit"):
        model["quantization"] = {"method": "bnb-8bit"}
    elif quantized not in (None, False):
        notes.append(
            f"{where or 'quantized'} = {quantized!r}: no specbench quantization of that name"
        )
    if where:
        known = {"path", "model", "name", "device", "dtype", "torch_dtype", "quantized"}
        _rest(options, known | {"quantization"}, f"{where}.", notes)
    return model


def _prompts(source: Mapping[str, Any], unmapped: list[str]) -> dict[str, Any]:
    """A prompt set from ``dataset`` (a name, a path or ``{path, name}``) or ``prompts``."""
    limit = source.get("num_prompts", source.get("limit"))
    extra = {"limit": limit} if isinstance(limit, int) and limit > 0 else {}
    given = source.get("dataset", source.get("data", source.get("prompts")))
    if isinstance(given, list) and all(isinstance(p, str) for p in given):
        return {"source": "inline", "prompts": given, **extra}
    name = given.get("name") if isinstance(given, dict) else None
    path = given.get("path") if isinstance(given, dict) else given
    for candidate in (name, path):
        builtin = _builtin(candidate)
        if builtin:
            split = {"split": "train"} if "train" in str(given) and builtin == "gsm8k" else {}
            return {"source": builtin, **split, **extra}
    if isinstance(path, str) and Path(path).suffix.lower() in (".jsonl", ".json"):
        return {"source": "jsonl", "path": path, **extra}
    if isinstance(path, str) and Path(path).suffix.lower() in (".parquet", ".csv"):
        return {"source": "dataset", "path": path, **extra}
    if given is not None:
        unmapped.append(
            f"dataset = {given!r}: prompt files are local and no built-in set matches; "
            f"mt-bench was put in its place (built-in: {', '.join(BUILTIN_SETS)})"
        )
    else:
        unmapped.append("no dataset given: mt-bench was chosen")
    return {"source": "mt-bench", **extra}


def _builtin(text: Any) -> str | None:
    if not isinstance(text, str):
        return None
    key = re.sub(r"[^a-z0-9]", "", text.lower().rsplit("/", 1)[-1])
    names = {"mtbench": "mt-bench", "specbench": "spec-bench", "gsm8k": "gsm8k",
             "humaneval": "humaneval", "openaihumaneval": "humaneval"}  # fmt: skip
    return names.get(key)


def _rest(source: Mapping[str, Any], known: set[str], prefix: str, unmapped: list[str]) -> None:
    for key, value in source.items():
        if key not in known:
            unmapped.append(f"{prefix}{key} = {value!r}: no specbench equivalent")


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-") or "imported"
