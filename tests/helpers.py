"""Shared builders for tests: toy model pairs and methods by name (from specbench.testing),
HF pairs, fake distributions."""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Any

from specbench.plugins import MethodModels
from specbench.records import SampleRecord
from specbench.testing import make_method as make_method
from specbench.testing import request as request
from specbench.testing import toy_models

#: The toy target and draft most tests use.
toy_pair = toy_models


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
