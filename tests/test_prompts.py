"""Prompt sets: the built-in sets, local files through datasets, shaping and chat encoding."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from specbench.errors import SpecbenchError
from specbench.models.toy import ToyTokenizer
from specbench.prompts.conversation import PromptEncoder
from specbench.prompts.prompt import gsm8k_final_answer, normalize_number
from specbench.prompts.sources import BuiltinPromptSet, DatasetPromptSet, InlinePromptSet

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"


def test_mt_bench_has_80_two_turn_questions_in_8_categories() -> None:
    prompts = BuiltinPromptSet(source="mt-bench").load(Path())
    assert len(prompts) == 80
    assert all(len(p.turns) == 2 for p in prompts)
    assert len({p.category for p in prompts}) == 8
    assert prompts[0].id == "81"


def test_spec_bench_has_480_questions_and_filters_by_category() -> None:
    prompts = BuiltinPromptSet(source="spec-bench").load(Path())
    assert len(prompts) == 480
    qa = BuiltinPromptSet(source="spec-bench", categories=["qa", "rag"]).load(Path())
    assert len(qa) == 160 and {p.category for p in qa} == {"qa", "rag"}
    balanced = BuiltinPromptSet(source="spec-bench", per_category=2).load(Path())
    assert len(balanced) == 13 * 2


def test_gsm8k_splits_and_answers() -> None:
    test = BuiltinPromptSet(source="gsm8k").load(Path())
    train = BuiltinPromptSet(source="gsm8k", split="train").load(Path())
    assert (len(test), len(train)) == (1319, 7473)
    assert test[0].reference["answer"] == "18" and test[0].task == "gsm8k"
    assert not {p.id for p in test} & {p.id for p in train}
    assert gsm8k_final_answer("so 3 + 4 = 7\n#### 1,234") == "1234"
    assert normalize_number("$5.50") == "5.5" and normalize_number("-3.0") == "-3"


def test_humaneval_keeps_tests_as_reference() -> None:
    prompts = BuiltinPromptSet(source="humaneval", limit=3).load(Path())
    assert prompts[0].id == "HumanEval/0"
    assert "def check(candidate)" in prompts[0].reference["test"]
    assert prompts[0].reference["entry_point"] == "has_close_elements"
    assert prompts[0].task == "humaneval"


@pytest.mark.skipif(not SHARED.exists(), reason="../shared/data not present")
def test_packaged_data_equals_the_shared_copies() -> None:
    from specbench.prompts.sources import DATA_DIR

    for name in (
        "mt_bench_question.jsonl",
        "spec_bench_question.jsonl",
        "gsm8k_test.jsonl",
        "gsm8k_train.jsonl",
        "humaneval.jsonl",
    ):
        assert (DATA_DIR / name).read_bytes() == (SHARED / name).read_bytes(), name


def test_shaping_limit_turns_and_template() -> None:
    prompts = BuiltinPromptSet(
        source="mt-bench", limit=3, max_turns=1, template="Q: {prompt}\nA:"
    ).load(Path())
    assert len(prompts) == 3
    assert prompts[0].turns == (
        "Q: " + BuiltinPromptSet(source="mt-bench").load(Path())[0].turns[0] + "\nA:",
    )


def test_empty_after_filtering_is_an_error() -> None:
    with pytest.raises(SpecbenchError, match="is left after filtering"):
        BuiltinPromptSet(source="mt-bench", categories=["nope"]).load(Path())


def test_train_split_only_for_gsm8k() -> None:
    issues = BuiltinPromptSet(source="humaneval", split="train").check(Path())
    assert issues and issues[0][0] == "split"


@pytest.mark.parametrize("suffix", ["jsonl", "parquet", "csv"])
def test_dataset_source_reads_local_files(tmp_path: Path, suffix: str) -> None:
    datasets = pytest.importorskip("datasets")
    rows = [
        {"question": "what is 2+2?", "uid": "a", "topic": "math"},
        {"question": "name a colour", "uid": "b", "topic": "misc"},
    ]
    path = tmp_path / f"data.{suffix}"
    table = datasets.Dataset.from_list(rows)
    if suffix == "jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    elif suffix == "parquet":
        table.to_parquet(str(path))
    else:
        table.to_csv(str(path), index=False)
    spec = DatasetPromptSet(
        path=str(path), prompt_field="question", id_field="uid", category_field="topic"
    )
    assert spec.check(tmp_path) == []
    prompts = spec.load(tmp_path)
    assert [(p.id, p.text, p.category) for p in prompts] == [
        ("a", "what is 2+2?", "math"),
        ("b", "name a colour", "misc"),
    ]


def test_inline_prompts_with_turns() -> None:
    spec = InlinePromptSet(prompts=["one", {"id": "x", "turns": ["a", "b"], "category": "c"}])
    prompts = spec.load(Path())
    assert prompts[1].id == "x" and prompts[1].turns == ("a", "b")


class _ChatTokenizer(ToyTokenizer):
    def chat_ids(self, messages):
        return self.encode(
            ",".join(f"{m['role']}.{m['content']}" for m in messages) + ",assistant."
        )


def test_encoder_uses_the_chat_template_with_history() -> None:
    encoder = PromptEncoder(_ChatTokenizer(64), chat_template=True, system_prompt="be brief")
    ids = encoder.encode([("hi", "hello")], "more")
    assert (
        ToyTokenizer(64).decode(ids)
        == "system.be brief,user.hi,assistant.hello,user.more,assistant."
    )


def test_encoder_falls_back_to_plain_text() -> None:
    tokenizer = ToyTokenizer(64)
    plain = PromptEncoder(tokenizer, chat_template=True).encode([("hi", "hello")], "more")
    assert tokenizer.decode(plain) == "hi\n\nhello\n\nmore"
    forced = PromptEncoder(_ChatTokenizer(64), chat_template=False).encode([], "x")
    assert tokenizer.decode(forced) == "x"


def test_an_empty_jsonl_file_is_named_in_the_error(tmp_path: Path) -> None:
    from specbench.plugins import discover_methods
    from specbench.presets.schema import PresetError, load_preset

    (tmp_path / "empty.jsonl").write_text("\n")
    preset = tmp_path / "p.toml"
    preset.write_text(
        '[models.target]\nbackend = "toy"\n[prompts]\nsource = "jsonl"\npath = "empty.jsonl"\n'
    )
    with pytest.raises(PresetError) as error:
        load_preset(str(preset), discover_methods())
    text = str(error.value)
    assert f"the prompt file {tmp_path / 'empty.jsonl'} holds no prompts" in text


def test_filters_that_leave_nothing_name_the_source(tmp_path: Path) -> None:
    from specbench.plugins import discover_methods
    from specbench.presets.schema import PresetError, load_preset

    preset = tmp_path / "p.toml"
    preset.write_text(
        '[models.target]\nbackend = "toy"\n[prompts]\nsource = "mt-bench"\n'
        'categories = ["no-such-category"]\n'
    )
    with pytest.raises(PresetError, match="no prompt of the built-in set mt-bench is left"):
        load_preset(str(preset), discover_methods())


@pytest.mark.parametrize("prompts", ['[""]', '["ok", "   "]', '[{ turns = ["hi", ""] }]'])
def test_an_empty_prompt_fails_validate_not_the_run(tmp_path: Path, prompts: str) -> None:
    from typer.testing import CliRunner

    from specbench.cli.main import app

    preset = tmp_path / "p.toml"
    preset.write_text(
        f'[models.target]\nbackend = "toy"\n[prompts]\nsource = "inline"\nprompts = {prompts}\n'
    )
    result = CliRunner().invoke(app, ["validate", str(preset)], env={"COLUMNS": "300"})
    assert result.exit_code == 2, result.output
    assert "the prompt is empty" in result.output


# ----------------------------------------------------------------------------- unique ids


def _jsonl_preset(tmp_path: Path, lines: list[dict]) -> Path:  # type: ignore[type-arg]
    (tmp_path / "prompts.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    preset = tmp_path / "ids.toml"
    preset.write_text(
        '[models.target]\nbackend = "toy"\nvocab_size = 24\n[[methods]]\nname = "baseline"\n'
        '[prompts]\nsource = "jsonl"\npath = "prompts.jsonl"\n'
        "[sampling]\nmax_new_tokens = 4\n[runs]\nwarmup = 0\n"
    )
    return preset


def test_an_automatic_id_never_takes_a_given_one(tmp_path: Path) -> None:
    """Line 2 has no id; its position (1) is the given id of line 1, so it gets another."""
    from typer.testing import CliRunner

    from specbench.cli.main import app
    from specbench.records import SampleRecord, read_records

    preset = _jsonl_preset(
        tmp_path, [{"prompt": "alpha", "id": "1"}, {"prompt": "beta"}, {"prompt": "gamma"}]
    )
    out = tmp_path / "out.jsonl"
    result = CliRunner().invoke(app, ["run", "-p", str(preset), "-o", str(out), "-q"])
    assert result.exit_code == 0, result.output
    samples = [r for r in read_records(out) if isinstance(r, SampleRecord)]
    assert sorted(s.prompt_id for s in samples) == ["1", "1.2", "2"]


def test_automatic_ids_stay_the_line_numbers_without_collisions(tmp_path: Path) -> None:
    """Files without ids keep the ids earlier results were written with (resume pairs by id)."""
    from specbench.prompts.sources import JsonlPromptSet

    (tmp_path / "p.jsonl").write_text(
        '{"prompt": "a"}\n{"prompt": "b", "id": "x"}\n{"prompt": "c"}\n'
    )
    loaded = JsonlPromptSet(path=str(tmp_path / "p.jsonl")).load(tmp_path)
    assert [p.id for p in loaded] == ["0", "x", "2"]
    inline = InlinePromptSet(prompts=["a", {"prompt": "b", "id": "p0"}, "c"]).load(tmp_path)
    assert [p.id for p in inline] == ["p0.2", "p0", "p2"]


@pytest.mark.parametrize("command", ["validate", "run"])
def test_a_repeated_given_id_names_the_file_and_both_lines(tmp_path: Path, command: str) -> None:
    from typer.testing import CliRunner

    from specbench.cli.main import app

    preset = _jsonl_preset(
        tmp_path,
        [{"prompt": "a", "id": "a"}, {"prompt": "b", "id": "a"}, {"prompt": "c", "id": "c"}],
    )
    args = [command, str(preset)] if command == "validate" else ["run", "-p", str(preset)]
    result = CliRunner().invoke(app, args, env={"COLUMNS": "300"})
    assert result.exit_code == 2, result.output
    file = tmp_path / "prompts.jsonl"
    assert f"{file}:1 and {file}:2 both have id 'a'" in result.output
    assert len([line for line in result.output.splitlines() if "both have id" in line]) == 1


def test_repeated_inline_and_builtin_ids(tmp_path: Path) -> None:
    with pytest.raises(SpecbenchError, match=r"prompts\[0\] and prompts\[2\] both have id 'q'"):
        InlinePromptSet(prompts=[{"id": "q", "prompt": "a"}, "b", {"id": "q", "prompt": "c"}]).load(
            tmp_path
        )
    for source in ("mt-bench", "spec-bench", "humaneval", "gsm8k"):
        ids = [p.id for p in BuiltinPromptSet(source=source).load(tmp_path)]  # type: ignore[arg-type]
        assert len(ids) == len(set(ids)), source
