"""Shared builders for tests: toy model pairs and methods by name."""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Any

from specbench.decoding.sampling import SamplingParams
from specbench.decoding.types import GenerationRequest
from specbench.models.toy import ToyConfig, ToyLanguageModel
from specbench.plugins import DecodingMethod, MethodModels, discover_methods
from specbench.records import SampleRecord


def toy_pair(
    vocab_size: int = 6,
    order: int = 1,
    seed: int = 0,
    distance: float = 1.0,
    sharpness: float = 1.5,
    eos_bias: float | None = None,
) -> MethodModels:
    """A toy target and a draft at ``distance`` from it."""
    common: dict[str, Any] = dict(
        vocab_size=vocab_size, order=order, seed=seed, sharpness=sharpness, eos_bias=eos_bias
    )
    target = ToyLanguageModel(ToyConfig(**common), name="toy-target")
    draft = ToyLanguageModel(ToyConfig(**common, distance=distance), name="toy-draft")
    return MethodModels(target=target, draft=draft)


def make_method(name: str, models: MethodModels, **params: Any) -> DecodingMethod:
    """An installed method, built the way the runner builds it."""
    info = discover_methods().get(name)
    return info.cls(info.cls.Params(**params), models)


def request(
    prompt: list[int],
    max_new_tokens: int,
    seed: int = 0,
    temperature: float = 0.0,
    top_k: int | None = None,
    top_p: float = 1.0,
    stop: frozenset[int] = frozenset(),
) -> GenerationRequest:
    return GenerationRequest(
        prompt_ids=prompt,
        max_new_tokens=max_new_tokens,
        sampling=SamplingParams(temperature=temperature, top_k=top_k, top_p=top_p),
        seed=seed,
        stop_token_ids=stop,
    )


def hf_pair(tiny_hf: dict[str, Any], arch: str = "llama", **draft_extra: Any) -> MethodModels:
    """The tiny Hugging Face target/draft pair of ``arch`` (fp32, CPU), loaded by specbench."""
    from specbench.models.loading import load_models
    from specbench.models.specs import HFModelSpec, ModelsSpec

    folders = tiny_hf[arch]
    return load_models(
        ModelsSpec(
            target=HFModelSpec(model=str(folders["target"]), dtype="float32", device="cpu"),
            draft=HFModelSpec(
                model=str(folders["draft"]), dtype="float32", device="cpu", **draft_extra
            ),
        )
    )


def fake_distribution(
    root: Path, name: str, entry_points: str, modules: dict[str, str] | None = None
) -> None:
    """A minimal installed distribution on ``root`` (a sys.path entry) with entry points."""
    dist_info = root / f"{name.replace('-', '_')}-0.1.dist-info"
    dist_info.mkdir(parents=True)
    (dist_info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 0.1\n")
    (dist_info / "entry_points.txt").write_text(textwrap.dedent(entry_points))
    for module, source in (modules or {}).items():
        (root / f"{module}.py").write_text(textwrap.dedent(source))


def sample_record(**overrides: Any) -> SampleRecord:
    """A valid sample record of a 4-token baseline generation; ``overrides`` replace fields."""
    fields = dict(
        run_id="r",
        method="baseline",
        method_name="baseline",
        exact=True,
        prompt_id="p0",
        prompt_index=0,
        run=0,
        seed=1,
        prompt_tokens=3,
        new_tokens=4,
        stop_reason="length",
        wall_s=0.1,
        tokens_per_sec=40.0,
        steps=4,
        target_calls=4,
        draft_calls=0,
        proposed=0,
        accepted=0,
        rejections=0,
        verified=0,
        acceptance_rate=None,
        proposal_acceptance=None,
        expected_acceptance_rate=None,
        avg_tokens_per_step=1.0,
        accepted_per_step=0.0,
        target_calls_per_token=1.0,
        position_verified=[],
        position_accepted=[],
    )
    fields.update(overrides)
    return SampleRecord(**fields)
