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


def tiny_hf_models(pair: dict[str, str]) -> str:
    """The ``[models.*]`` tables of a tiny HF target/draft pair (``tiny_hf`` fixture folders),
    float32 on the CPU."""
    return f"""
[models.target]
backend = "hf"
model = "{pair["target"]}"
dtype = "float32"
device = "cpu"
[models.draft]
backend = "hf"
model = "{pair["draft"]}"
dtype = "float32"
device = "cpu"
"""


def write_tiny_hf_sampling_preset(path: Path, pair: dict[str, str], method: str) -> Path:
    """The tiny HF pair sampling at temperature 1 with top-k 20, one prompt, for the audit;
    ``method``: one ``[[methods]]`` table body."""
    path.write_text(
        tiny_hf_models(pair)
        + f"""
[[methods]]
{method}
[prompts]
source = "inline"
prompts = ["hello world"]
chat_template = false
[sampling]
temperature = 1.0
top_k = 20
max_new_tokens = 8
"""
    )
    return path


AUDIT_TOY = """
name = "audit-toy"

[models.target]
backend = "toy"
vocab_size = 12
order = 1
seed = 3
sharpness = 1.2

[models.draft]
backend = "toy"
vocab_size = 12
order = 1
seed = 3
sharpness = 1.2
distance = {distance}

{methods}

[prompts]
source = "inline"
prompts = ["abc", "hello there"]

[sampling]
temperature = {temperature}
top_k = {top_k}
top_p = {top_p}
max_new_tokens = 12
"""


def write_audit_toy_preset(
    path: Path,
    methods: list[str],
    temperature: float = 0.9,
    distance: float = 1.0,
    top_k: int = 10,
    top_p: float = 0.95,
) -> Path:
    """The audit's toy pair (vocabulary 12, two prompts) with one ``[[methods]]`` table per
    entry of ``methods``."""
    tables = "\n".join(f"[[methods]]\n{entry}\n" for entry in methods)
    path.write_text(
        AUDIT_TOY.format(
            methods=tables, temperature=temperature, distance=distance, top_k=top_k, top_p=top_p
        )
    )
    return path
