"""bitsandbytes 4/8-bit and optimum-quanto models load and generate on the CPU, for real."""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers import make_method, request

from specbench.models.loading import load_models
from specbench.models.specs import HFModelSpec, ModelsSpec

pytest.importorskip("transformers")

QUANTIZATIONS = [
    pytest.param(
        {"method": "bnb-4bit", "quant_type": "nf4", "compute_dtype": "float32"}, id="bnb-nf4"
    ),
    pytest.param(
        {"method": "bnb-4bit", "quant_type": "fp4", "compute_dtype": "float32"}, id="bnb-fp4"
    ),
    pytest.param({"method": "bnb-8bit"}, id="bnb-8bit"),
    pytest.param({"method": "quanto", "weights": "int8"}, id="quanto-int8"),
    pytest.param({"method": "quanto", "weights": "int4"}, id="quanto-int4"),
]
PACKAGES = {"bnb-4bit": "bitsandbytes", "bnb-8bit": "bitsandbytes", "quanto": "optimum.quanto"}


def _spec(folder: Path, **extra) -> HFModelSpec:
    return HFModelSpec(model=str(folder), dtype="float32", device="cpu", **extra)


@pytest.mark.parametrize("quantization", QUANTIZATIONS)
def test_quantized_draft_loads_generates_and_keeps_greedy_exact(
    tiny_hf: dict, quantization: dict
) -> None:
    pytest.importorskip(PACKAGES[quantization["method"]])
    folders = tiny_hf["llama"]
    models = load_models(
        ModelsSpec(
            target=_spec(folders["target"]),
            draft=_spec(folders["draft"], quantization=quantization),
        )
    )
    assert models.draft is not None
    described = models.draft.describe()
    assert described["quantization"]["method"] == quantization["method"]
    layer_type = type(models.draft.model.model.layers[0].mlp.down_proj).__name__
    assert layer_type != "Linear"  # really quantized
    prompt = tiny_hf["tokenizer"].encode("the quick brown fox")
    baseline = make_method("baseline", models)
    speculative = make_method("speculative", models, k=3)
    result = speculative.generate(request(prompt, 24))
    # The draft's precision moves acceptance, never the output.
    assert result.tokens == baseline.generate(request(prompt, 24)).tokens
    assert result.stats.proposed > 0


@pytest.mark.parametrize("quantization", QUANTIZATIONS[2:4])
def test_quantized_target_decodes(tiny_hf: dict, quantization: dict) -> None:
    pytest.importorskip(PACKAGES[quantization["method"]])
    models = load_models(
        ModelsSpec(target=_spec(tiny_hf["qwen2"]["target"], quantization=quantization))
    )
    prompt = tiny_hf["tokenizer"].encode("def add(a, b):")
    result = make_method("baseline", models).generate(request(prompt, 16, temperature=0.7))
    assert len(result.tokens) == 16
    assert all(0 <= t < models.target.vocab_size for t in result.tokens)
