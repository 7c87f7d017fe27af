"""Batched speculative decoding: per-row caches, positions and rollback; exact and greedy-equal."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest
import torch
from helpers import hf_pair, make_method, request, toy_pair
from stats_utils import chi_square_pvalue
from test_exactness import LENGTH, POSITIONS, PROMPT, SAMPLES, _exact_triples

from specbench.decoding.sampling import SamplingParams
from specbench.decoding.verify import RejectionVerifier
from specbench.plugins import discover_methods
from specbench.presets.schema import load_preset, sweep_parameter
from specbench.records import SampleRecord, read_records
from specbench.run.runner import run_preset

ALPHA = 1e-3


def test_batch_session_rows_equal_single_sequence_forwards(tiny_hf: dict) -> None:
    models = hf_pair(tiny_hf)
    reference = tiny_hf["llama"]["target_model"]
    session = models.target.new_batch_session(3)

    def check(sequences, starts):
        out = session.logits_rows(sequences, starts)
        for row, (sequence, start) in enumerate(zip(sequences, starts, strict=True)):
            if sequence is None:
                assert out[row] is None
                continue
            with torch.no_grad():
                expected = reference(torch.tensor([sequence])).logits[0, start:]
            assert torch.allclose(out[row], expected, atol=1e-4), row

    check([[1, 2, 3, 4, 5], [7, 8], [9, 10, 11]], [4, 1, 0])  # ragged prompts
    check([[1, 2, 3, 4, 5, 6, 7], [7, 20, 21], None], [5, 1, 0])  # roll back row 1, row 2 idles
    check([[1, 2, 3, 4, 5, 6, 30], [7, 20, 21, 22], [9, 10, 11, 12]], [6, 3, 3])


class RecordingVerifier(RejectionVerifier):
    def __init__(self) -> None:
        self.steps: list[list[int]] = []

    def verify(self, draft_tokens, draft_probs, target_probs, generator, features=None):
        verdict = super().verify(draft_tokens, draft_probs, target_probs, generator, features)
        self.steps.append(verdict.accepted.tolist())
        return verdict


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_batched_greedy_speculative_equals_baseline(tiny_hf: dict, arch: str) -> None:
    models = hf_pair(tiny_hf, arch)
    tokenizer = tiny_hf["tokenizer"]
    texts = ["the quick brown", "def add(a, b):", "question: what is two plus", "speculative"]
    prompts = [tokenizer.encode(t) for t in texts]
    baseline = make_method("baseline", models)
    expected = [baseline.generate(request(p, 30)).tokens for p in prompts]
    # Stop at a token the second row produces early, so that row finishes first.
    stop = expected[1][5]
    expected_stopped = [
        baseline.generate(request(p, 30, stop=frozenset({stop}))).tokens for p in prompts
    ]
    speculative = make_method("speculative", models, k=4, batch_size=4)
    recorder = RecordingVerifier()
    speculative.verifier = recorder
    results = speculative.generate_batch([request(p, 30, stop=frozenset({stop})) for p in prompts])
    assert [r.tokens for r in results] == expected_stopped
    assert results[1].stop_reason == "eos" and len(results[1].tokens) < 30
    assert recorder.steps  # the method's verifier decided every row's steps
    assert len({r.stats.accepted for r in results}) > 1  # rows accepted at their own pace
    latencies = [r.latency_s for r in results]
    assert all(lat is not None and lat > 0 for lat in latencies)
    assert latencies[1] <= max(latencies)


def test_batched_baseline_and_prompt_lookup_equal_unbatched(tiny_hf: dict) -> None:
    models = hf_pair(tiny_hf, "qwen2")
    tokenizer = tiny_hf["tokenizer"]
    prompts = [
        tokenizer.encode(t)
        for t in ("def add(a, b):\n    return a + b\ndef add(a", "the quick brown fox")
    ]
    single = make_method("baseline", models)
    expected = [single.generate(request(p, 24)).tokens for p in prompts]
    for name, params in (("baseline", {}), ("prompt-lookup", {"k": 5})):
        method = make_method(name, models, batch_size=2, **params)
        assert [
            r.tokens for r in method.generate_batch([request(p, 24) for p in prompts])
        ] == expected


@pytest.mark.parametrize(("temperature", "top_p"), [(1.0, 1.0), (0.7, 0.9)])
def test_batched_sampling_matches_target(temperature: float, top_p: float) -> None:
    """Rows finish at different steps, so drafts are padded: the padding must stay exact."""
    models = toy_pair(vocab_size=6, order=1, seed=11, distance=1.2)
    method = make_method("speculative", models, k=4, batch_size=4)
    counts: dict[int, Counter] = {t: Counter() for t in POSITIONS}
    for call in range(SAMPLES // 4):
        requests = [
            request(PROMPT, LENGTH, 4 * call + row, temperature, None, top_p) for row in range(4)
        ]
        for result in method.generate_batch(requests):
            for t in POSITIONS:
                counts[t][tuple(result.tokens[t : t + 3])] += 1
    exact = _exact_triples(models.target, SamplingParams(temperature=temperature, top_p=top_p))
    pvalues = [chi_square_pvalue(counts[t], exact[t]) for t in POSITIONS]
    assert min(pvalues) > ALPHA / len(pvalues), pvalues


PRESET = """
[models.target]
backend = "toy"
vocab_size = 32
forward_ms = 2.0
[models.draft]
backend = "toy"
vocab_size = 32
distance = 0.5
[[methods]]
name = "baseline"
[[methods]]
name = "speculative"
params = { k = 3 }
[prompts]
source = "inline"
prompts = ["a b c", "d e f", "g h i", "j k l", "m n o"]
[sampling]
temperature = 0.0
max_new_tokens = 12
[runs]
warmup = 0
[output]
save_tokens = true
"""


def test_runner_batches_and_records_latency_and_throughput(tmp_path: Path) -> None:
    path = tmp_path / "b.toml"
    path.write_text(PRESET)
    resolved = sweep_parameter(load_preset(str(path), discover_methods()), "batch_size", [1, 2, 4])
    out = tmp_path / "b.jsonl"
    outcome = run_preset(resolved, output=out)
    samples = [r for r in read_records(out) if isinstance(r, SampleRecord)]
    assert len(samples) == 6 * 5  # 3 batch sizes x 2 methods x 5 prompts
    by_label: dict[str, list[SampleRecord]] = {}
    for sample in samples:
        by_label.setdefault(sample.method, []).append(sample)
    four = by_label["speculative-batch_size=4"]
    assert {s.batch_size for s in four} == {4, 1} or {s.batch_size for s in four} == {4}
    assert len({s.batch_id for s in four}) == 2  # 5 prompts: a batch of 4 and one of 1
    for s in four:
        assert s.batch_wall_s is not None and s.wall_s <= s.batch_wall_s + 1e-9
    reference = {s.prompt_id: s.tokens for s in by_label["baseline-batch_size=1"]}
    for label, rows in by_label.items():
        assert {s.prompt_id: s.tokens for s in rows} == reference, label
    summaries = {s.method: s for s in outcome.summaries}
    assert summaries["speculative-batch_size=4"].batch_size == 4
    assert (
        summaries["baseline-batch_size=4"].throughput_tokens_per_sec
        > summaries["baseline-batch_size=1"].throughput_tokens_per_sec
    )


def test_report_draws_latency_throughput(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from specbench.cli.main import app

    path = tmp_path / "b.toml"
    path.write_text(PRESET)
    resolved = sweep_parameter(load_preset(str(path), discover_methods()), "batch_size", [1, 4])
    out = tmp_path / "b.jsonl"
    run_preset(resolved, output=out)
    result = CliRunner().invoke(app, ["report", str(out), "--plots", str(tmp_path / "plots")])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "plots" / "latency_throughput.png").read_bytes().startswith(b"\x89PNG")
    assert "Latency vs throughput" in result.output
    from specbench.report.results import batch_points, load_results

    points = {(p.method, p.batch_size): p for p in batch_points(load_results(out))}
    assert set(points) == {(m, b) for m in ("baseline", "speculative") for b in (1, 4)}
    assert all(p.latency_s > 0 and p.throughput_tokens_per_sec > 0 for p in points.values())
