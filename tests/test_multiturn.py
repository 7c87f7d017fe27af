"""Multi-turn prompts: the second turn sees the model's first answer; one sample per prompt."""

from __future__ import annotations

from pathlib import Path

import pytest

from specbench.methods.baseline import BaselineMethod
from specbench.models.toy import ToyTokenizer
from specbench.plugins import discover_methods
from specbench.presets.schema import load_preset
from specbench.prompts.conversation import PromptEncoder
from specbench.records import SampleRecord, read_records
from specbench.run.runner import run_preset

PRESET = """
[models.target]
backend = "toy"
vocab_size = 64
[models.draft]
backend = "toy"
vocab_size = 64
distance = 0.5
[[methods]]
name = "baseline"
[[methods]]
name = "speculative"
[prompts]
source = "mt-bench"
limit = 2
[sampling]
temperature = 0.0
max_new_tokens = 12
[runs]
warmup = 0
[output]
save_tokens = true
"""


def test_turns_are_chained_and_recorded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "mt.toml"
    path.write_text(PRESET)
    resolved = load_preset(str(path), discover_methods())
    seen: list[list[int]] = []
    original = BaselineMethod.generate

    def spy(self, request):
        seen.append(list(request.prompt_ids))
        return original(self, request)

    monkeypatch.setattr(BaselineMethod, "generate", spy)
    out = tmp_path / "out.jsonl"
    run_preset(resolved, output=out)
    samples = [r for r in read_records(out) if isinstance(r, SampleRecord)]
    assert len(samples) == 4  # 2 prompts x 2 methods: one sample per conversation
    baseline = [s for s in samples if s.method == "baseline"]
    prompt = resolved.preset.prompts.load(Path())[0]
    first = baseline[0]
    assert first.turns == 2 and first.turn_new_tokens == [12, 12] and first.new_tokens == 24
    assert first.turn_texts is not None and len(first.turn_texts) == 2
    encoder = PromptEncoder(ToyTokenizer(64))
    assert seen[0] == encoder.encode([], prompt.turns[0])
    assert seen[1] == encoder.encode([(prompt.turns[0], first.turn_texts[0])], prompt.turns[1])
    # Greedy: the speculative conversation is the baseline's, turn for turn.
    speculative = [s for s in samples if s.method == "speculative"]
    assert all(s.matches_baseline for s in speculative)
    assert [s.tokens for s in speculative] == [s.tokens for s in baseline]
