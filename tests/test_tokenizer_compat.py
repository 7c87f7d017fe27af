"""A draft whose tokenizer differs from the target's is caught, with what differs."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from specbench.cli.main import app
from specbench.errors import ModelLoadError
from specbench.models.loading import check_models, load_models
from specbench.models.specs import HFModelSpec, ModelsSpec

pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def foreign_draft(tiny_hf: dict, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A draft with its own tokenizer, trained on different text."""
    from hf_fixtures import build_model, build_tokenizer, save

    tokenizer = build_tokenizer(corpus=["completely different words here, zebra xylophone"] * 50)
    model = build_model("llama", len(tokenizer), seed=5)
    return save(model, tokenizer, tmp_path_factory.mktemp("foreign") / "draft")


def _pair(tiny_hf: dict, draft: Path) -> ModelsSpec:
    return ModelsSpec(
        target=HFModelSpec(model=str(tiny_hf["llama"]["target"]), dtype="float32", device="cpu"),
        draft=HFModelSpec(model=str(draft), dtype="float32", device="cpu"),
    )


def test_loading_a_mismatched_pair_fails_saying_what_differs(
    tiny_hf: dict, foreign_draft: Path
) -> None:
    with pytest.raises(ModelLoadError) as error:
        load_models(_pair(tiny_hf, foreign_draft))
    message = str(error.value)
    assert "vocabulary entries differ (first: " in message
    assert " in the target, " in message and " in the draft" in message
    assert "model family" in message


def test_check_models_loads_only_tokenizers(tiny_hf: dict, foreign_draft: Path) -> None:
    issues, notes = check_models(_pair(tiny_hf, foreign_draft))
    assert len(issues) == 1 and issues[0][0] == "models.draft"
    assert not notes
    same_issues, _ = check_models(_pair(tiny_hf, tiny_hf["llama"]["draft"]))
    assert same_issues == []


def test_special_tokens_are_compared(tiny_hf: dict, tmp_path: Path) -> None:
    from hf_fixtures import build_model, save

    tokenizer = tiny_hf["tokenizer"].__class__.from_pretrained(tiny_hf["llama"]["target"])
    tokenizer.eos_token = "<|endoftext|>"
    folder = save(build_model("llama", len(tokenizer), seed=2), tokenizer, tmp_path / "eos-draft")
    issues, _ = check_models(_pair(tiny_hf, folder))
    assert "special tokens differ: eos: target '<|im_end|>', draft '<|endoftext|>'" in issues[0][1]


def test_validate_cli_exits_2_on_a_mismatched_pair(
    tiny_hf: dict, foreign_draft: Path, tmp_path: Path
) -> None:
    preset = tmp_path / "pair.toml"
    preset.write_text(
        f"""
[models.target]
backend = "hf"
model = "{tiny_hf["llama"]["target"]}"
[models.draft]
backend = "hf"
model = "{foreign_draft}"
[[methods]]
name = "speculative"
[prompts]
source = "inline"
prompts = ["hello"]
"""
    )
    result = CliRunner().invoke(app, ["validate", str(preset)])
    assert result.exit_code == 2
    assert "models.draft: the draft's tokenizer does not match the target's" in result.output


def test_hub_ids_validate_without_downloading() -> None:
    spec = ModelsSpec(
        target=HFModelSpec(model="meta-llama/Llama-3.1-8B-Instruct"),
        draft=HFModelSpec(model="meta-llama/Llama-3.2-1B-Instruct"),
    )
    issues, notes = check_models(spec)
    assert issues == []
    assert len(notes) == 2 and all("hub id that is not downloaded" in n for n in notes)


_ORDER_SCRIPT = """
from specbench.models.compat import compare_tokenizers

class Vocab:
    def __init__(self, vocab, special):
        self.vocab, self.special = vocab, special
    def get_vocab(self):
        return self.vocab
    def special_tokens(self):
        return self.special

shared = {f"tok{i}": i for i in range(10)}
target = Vocab(shared, {"eos": "a", "bos": "b"})
draft = Vocab({**shared, **{f"extra{i}": 10 + i for i in range(30)}}, {"eos": "c", "bos": "d"})
print(compare_tokenizers(target, draft).describe())
"""


def test_a_vocabulary_mismatch_lists_the_same_sorted_differences_every_time() -> None:
    """Tokens only the draft has tie on the target side: listed by draft id, whatever the
    interpreter's hash seed (which orders a set of strings)."""
    import os
    import subprocess
    import sys

    outputs = {
        subprocess.run(
            [sys.executable, "-c", _ORDER_SCRIPT],
            env={**os.environ, "PYTHONHASHSEED": str(seed)},
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        for seed in (1, 2, 3)
    }
    assert len(outputs) == 1, outputs
    (text,) = outputs
    assert (
        "30 of 40 vocabulary entries differ (first: 'extra0' is missing in the target, id 10 in the draft, 'extra1'"
        in text
    )
    assert "special tokens differ: bos: target 'b', draft 'd', eos: target 'a', draft 'c'" in text
