"""The runner: records as specified, summaries, speedup, resume without duplicates."""

from __future__ import annotations

from pathlib import Path

import pytest
from presets_for_tests import write_fast_preset

from specbench.errors import SpecbenchError
from specbench.plugins import discover_methods
from specbench.presets.schema import load_preset
from specbench.records import RunHeader, SampleRecord, SummaryRecord, read_records
from specbench.run.progress import Progress
from specbench.run.runner import RunAborted, run_preset

SAMPLE_FIELDS = {
    "method",
    "prompt_id",
    "run",
    "new_tokens",
    "wall_s",
    "tokens_per_sec",
    "proposed",
    "accepted",
    "rejections",
    "acceptance_rate",
    "avg_tokens_per_step",
    "target_calls",
    "target_calls_per_token",
    "position_verified",
    "position_accepted",
    "text",
    "tokens",
}


def _resolve(path: Path, overrides=()):
    return load_preset(str(path), discover_methods(), overrides)


def test_run_writes_header_samples_and_summaries(tmp_path: Path) -> None:
    preset = _resolve(write_fast_preset(tmp_path))
    out = tmp_path / "out.jsonl"
    outcome = run_preset(preset, output=out)
    records = read_records(out)
    headers = [r for r in records if isinstance(r, RunHeader)]
    samples = [r for r in records if isinstance(r, SampleRecord)]
    summaries = [r for r in records if isinstance(r, SummaryRecord)]
    assert len(headers) == 1 and records[0] is headers[0]
    assert len(samples) == 2 * 4 * 2  # methods x prompts x runs
    assert [s.method for s in summaries] == ["baseline", "speculative"]
    assert records[-2:] == summaries  # summaries come last
    assert set(samples[0].model_dump()) >= SAMPLE_FIELDS
    header = headers[0]
    assert header.preset_hash == preset.hash and header.seed == 0
    assert {"torch", "python", "specbench", "cpu"} <= set(header.environment)
    assert set(header.models) == {"target", "draft"}
    by_label = {s.method: s for s in summaries}
    assert by_label["baseline"].speedup == pytest.approx(1.0)
    assert by_label["speculative"].speedup is not None
    assert by_label["speculative"].acceptance_rate is not None
    assert outcome.summaries == summaries
    for sample in samples:
        assert sample.tokens is not None and len(sample.tokens) == sample.new_tokens
        assert sample.text is not None


def test_every_method_sees_the_same_seed_per_prompt_and_run(tmp_path: Path) -> None:
    preset = _resolve(write_fast_preset(tmp_path), [("sampling.temperature", 0.0)])
    out = tmp_path / "out.jsonl"
    run_preset(preset, output=out)
    samples = [r for r in read_records(out) if isinstance(r, SampleRecord)]
    by_key: dict[tuple[str, int], dict[str, SampleRecord]] = {}
    for s in samples:
        by_key.setdefault((s.prompt_id, s.run), {})[s.method] = s
    for pair in by_key.values():
        assert pair["baseline"].seed == pair["speculative"].seed
        # Greedy: identical output token for token.
        assert pair["baseline"].tokens == pair["speculative"].tokens


def test_progress_callback_sees_every_sample(tmp_path: Path) -> None:
    preset = _resolve(write_fast_preset(tmp_path))
    seen: list[Progress] = []
    run_preset(preset, output=tmp_path / "out.jsonl", on_progress=seen.append)
    finished = [p for p in seen if p.last is not None]
    assert len(finished) == 16
    assert finished[-1].done == finished[-1].total == 16
    assert seen[-1].phase == "done"
    assert {p.phase for p in seen} >= {"loading", "warmup", "running", "done"}


def _interrupt_after(count: int):
    def callback(progress: Progress) -> None:
        if progress.last is not None and progress.done >= count:
            raise KeyboardInterrupt

    return callback


def test_resume_after_interrupt_skips_done_work_without_duplicates(tmp_path: Path) -> None:
    preset = _resolve(write_fast_preset(tmp_path))
    out = tmp_path / "out.jsonl"
    with pytest.raises(RunAborted) as aborted:
        run_preset(preset, output=out, on_progress=_interrupt_after(5))
    assert isinstance(aborted.value.cause, KeyboardInterrupt)
    assert aborted.value.written == 5
    partial = read_records(out)
    assert sum(isinstance(r, SampleRecord) for r in partial) == 5
    assert not any(isinstance(r, SummaryRecord) for r in partial)

    outcome = run_preset(preset, output=out, resume=True)
    assert outcome.skipped == 5 and outcome.written == 11
    records = read_records(out)
    samples = [r for r in records if isinstance(r, SampleRecord)]
    keys = [(s.method, s.prompt_id, s.run) for s in samples]
    assert len(keys) == len(set(keys)) == 16
    headers = [r for r in records if isinstance(r, RunHeader)]
    assert [h.session for h in headers] == [1, 2]
    assert len({h.run_id for h in headers}) == 1
    assert sum(isinstance(r, SummaryRecord) for r in records) == 2

    # A finished file resumes to nothing and writes nothing more.
    again = run_preset(preset, output=out, resume=True)
    assert again.written == 0
    assert len(read_records(out)) == len(records)


def test_resumed_results_equal_an_uninterrupted_run(tmp_path: Path) -> None:
    preset = _resolve(write_fast_preset(tmp_path))
    whole, broken = tmp_path / "whole.jsonl", tmp_path / "broken.jsonl"
    run_preset(preset, output=whole)
    with pytest.raises(RunAborted):
        run_preset(preset, output=broken, on_progress=_interrupt_after(7))
    run_preset(preset, output=broken, resume=True)

    def tokens(path: Path) -> dict:
        return {
            (r.method, r.prompt_id, r.run): r.tokens
            for r in read_records(path)
            if isinstance(r, SampleRecord)
        }

    assert tokens(whole) == tokens(broken)


def test_resume_refuses_a_file_from_another_preset(tmp_path: Path) -> None:
    out = tmp_path / "out.jsonl"
    run_preset(_resolve(write_fast_preset(tmp_path)), output=out)
    changed = _resolve(write_fast_preset(tmp_path), [("sampling.temperature", 0.3)])
    with pytest.raises(SpecbenchError, match="was written with other settings"):
        run_preset(changed, output=out, resume=True)


def test_existing_file_without_resume_is_refused(tmp_path: Path) -> None:
    out = tmp_path / "out.jsonl"
    preset = _resolve(write_fast_preset(tmp_path))
    run_preset(preset, output=out)
    with pytest.raises(SpecbenchError, match="--resume"):
        run_preset(preset, output=out)


def test_resume_without_output_picks_the_newest_file_of_the_preset(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    preset = _resolve(write_fast_preset(tmp_path))
    with pytest.raises(SpecbenchError, match="no earlier results"):
        run_preset(preset, resume=True)
    with pytest.raises(RunAborted) as aborted:
        run_preset(preset, on_progress=_interrupt_after(3))
    outcome = run_preset(preset, resume=True)
    assert outcome.output.resolve() == aborted.value.output.resolve()
    assert outcome.skipped == 3


def test_method_failure_keeps_written_records(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    preset = _resolve(write_fast_preset(tmp_path))
    out = tmp_path / "out.jsonl"
    cls = preset.methods[1].info.cls
    calls = {"n": 0}
    original = cls.generate

    def flaky(self, request):
        calls["n"] += 1
        if calls["n"] > 4:  # 1 warm-up, then 3 timed samples succeed
            raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return original(self, request)

    monkeypatch.setattr(cls, "generate", flaky)
    with pytest.raises(RunAborted) as aborted:
        run_preset(preset, output=out)
    assert "speculative" in aborted.value.where
    samples = [r for r in read_records(out) if isinstance(r, SampleRecord)]
    # Prompt-major order: b s b s b s b, then the 4th speculative sample fails.
    assert len(samples) == aborted.value.written == 7


# ----------------------------------------------------------------------------- nothing skipped


def _jsonl_prompts_preset(tmp_path: Path, texts: list[str]) -> Path:
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(f'{{"prompt": "{text}"}}\n' for text in texts))
    preset = write_fast_preset(tmp_path)
    source = 'source = "inline"\nprompts = ["abc", "hello there", "xyz", "one two"]'
    preset.write_text(
        preset.read_text().replace(source, 'source = "jsonl"\npath = "prompts.jsonl"')
    )
    return preset


@pytest.mark.parametrize("interrupted", [True, False])
def test_resume_refuses_prompts_that_changed_under_the_same_ids(
    tmp_path: Path, interrupted: bool
) -> None:
    """Ids are line numbers here: after an edit, prompt 1 is another prompt, and resume would
    skip it as done. A finished file is refused too: its summaries describe other prompts."""
    preset_file = _jsonl_prompts_preset(tmp_path, ["abc", "hello there", "xyz"])
    out = tmp_path / "out.jsonl"
    if interrupted:
        with pytest.raises(RunAborted):
            run_preset(_resolve(preset_file), output=out, on_progress=_interrupt_after(3))
    else:
        run_preset(_resolve(preset_file), output=out)
    (tmp_path / "prompts.jsonl").write_text(
        '{"prompt": "abc"}\n{"prompt": "edited"}\n{"prompt": "xyz"}\n'
    )
    with pytest.raises(
        SpecbenchError, match=r"the prompts 1 are not the ones its samples were run on"
    ):
        run_preset(_resolve(preset_file), output=out, resume=True)


def test_prompts_sharing_an_id_are_refused_before_decoding(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A prompt source that yields one id twice (a plugin's, say) must not lose a prompt."""
    from specbench.prompts.prompt import Prompt
    from specbench.prompts.sources import InlinePromptSet

    def twins(self, base_dir):  # type: ignore[no-untyped-def]
        return [Prompt("same", ("first",)), Prompt("same", ("second",))]

    monkeypatch.setattr(InlinePromptSet, "load", twins)
    with pytest.raises(SpecbenchError, match="two prompts have the id 'same'"):
        run_preset(_resolve(write_fast_preset(tmp_path)), output=tmp_path / "out.jsonl")
