"""A GGUF file written in the test with the gguf package loads through the HF backend."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from specbench.models.hf.loading import load_hf_model
from specbench.models.specs import HFModelSpec

pytest.importorskip("gguf")


def test_gguf_file_loads_with_its_tokenizer(tiny_hf: dict, tmp_path: Path) -> None:
    from hf_fixtures import write_gguf

    tokenizer = tiny_hf["tokenizer"]
    reference = tiny_hf["qwen2"]["target_model"]
    write_gguf(reference, tokenizer, tmp_path / "tiny.gguf")
    spec = HFModelSpec(model=str(tmp_path), gguf_file="tiny.gguf", dtype="float32", device="cpu")
    model = load_hf_model(spec, str(tmp_path), "tiny-gguf")
    ids = tokenizer.encode("the quick brown fox")
    with torch.no_grad():
        expected = reference(torch.tensor([ids])).logits[0, -1]
    got = model.new_session().logits_from(ids, len(ids) - 1)[-1]
    assert torch.allclose(got, expected, atol=1e-4)
    assert model.tokenizer.get_vocab() == tokenizer.get_vocab()
    assert model.tokenizer.encode("def add(a, b):") == tokenizer.encode("def add(a, b):")
    assert model.tokenizer.chat_ids([{"role": "user", "content": "hi"}]) is not None
    assert model.describe()["gguf_file"] == "tiny.gguf"
