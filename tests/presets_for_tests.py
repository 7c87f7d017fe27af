"""Small preset files written by tests."""

from __future__ import annotations

from pathlib import Path

FAST_TOY = """
name = "{name}"
description = "fast toy preset for tests"

[models.target]
backend = "toy"
vocab_size = 24
order = 1
seed = 1
forward_ms = {forward_ms}

[models.draft]
backend = "toy"
vocab_size = 24
order = 1
seed = 1
distance = 0.7

[[methods]]
name = "baseline"

[[methods]]
name = "speculative"
params = {{ k = 3 }}

[prompts]
source = "inline"
prompts = ["abc", "hello there", "xyz", "one two"]

[sampling]
temperature = 0.8
max_new_tokens = {max_new_tokens}

[runs]
count = 2
warmup = 1

[output]
path = "{output}"
save_tokens = true
"""


def write_fast_preset(
    directory: Path,
    name: str = "fast",
    forward_ms: float = 0.0,
    max_new_tokens: int = 24,
    output: str = "results/{preset}-{timestamp}.jsonl",
) -> Path:
    path = directory / f"{name}.toml"
    path.write_text(
        FAST_TOY.format(
            name=name, forward_ms=forward_ms, max_new_tokens=max_new_tokens, output=output
        )
    )
    return path
