"""Preset schema, references, overrides and error messages."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
from presets_for_tests import write_fast_preset

from specbench.errors import SpecbenchError
from specbench.plugins import discover_methods
from specbench.presets.schema import (
    PresetError,
    apply_overrides,
    available_presets,
    builtin_preset_dir,
    load_preset,
    parse_override,
    select_methods,
)

REPO = Path(__file__).resolve().parent.parent


def _write(tmp_path: Path, text: str, name: str = "p.toml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


def _issues(path: Path) -> list[str]:
    with pytest.raises(PresetError) as error:
        load_preset(str(path), discover_methods())
    return [issue.render(str(path)) for issue in error.value.issues]


def test_every_shipped_preset_validates() -> None:
    presets = available_presets()
    assert {"quickstart", "toy-greedy", "toy-sampling"} <= set(presets)
    for name in presets:
        resolved = load_preset(name, discover_methods())
        assert resolved.methods, name


def test_builtin_presets_come_from_the_repository_presets_folder() -> None:
    assert builtin_preset_dir().resolve() in {
        (REPO / "presets").resolve(),
        (REPO / "specbench" / "_presets").resolve(),
    }


def test_quickstart_runs_every_installed_method_baseline_first() -> None:
    resolved = load_preset("quickstart", discover_methods())
    labels = [m.label for m in resolved.methods]
    assert labels[0] == "baseline"
    expected = {name for name, info in discover_methods().methods.items() if info.cls.in_all}
    assert set(labels) == expected and "autojudge" not in labels


BROKEN = """
    [models.target]
    backend = "toy"
    vocab_size = "big"
    sharpnes = 2.0

    [[methods]]
    name = "speculative"
    params = { k = -1, kk = 3 }

    [[methods]]
    name = "nope"

    [[methods]]
    name = "baseline"

    [[methods]]
    name = "baseline"

    [prompts]
    source = "inline"
    prompts = ["hi"]

    [sampling]
    temperature = -0.5
"""


def test_broken_preset_lists_every_issue_with_path_and_fix(tmp_path: Path) -> None:
    path = _write(tmp_path, BROKEN)
    issues = "\n".join(_issues(path))
    expected = [
        "models.target.vocab_size: Input should be a valid integer",
        "models.target.sharpnes: Extra inputs are not permitted. Fix: remove it or correct its spelling (allowed here: ",
        "sampling.temperature: Input should be greater than or equal to 0",
        "methods[0]: method 'speculative' needs a draft model and the preset has none. Fix: add a [models.draft] table",
        "methods[0].params.k: Input should be greater than or equal to 1",
        "methods[0].params.kk: Extra inputs are not permitted. Fix: remove it or correct its spelling (allowed here: ",
        "methods[1].name: no method named 'nope' is installed",
        "methods[3].label: 'baseline' is used by an earlier method",
    ]
    for text in expected:
        assert f"{path}: {text}" in issues
    kk_line = next(line for line in issues.splitlines() if ".params.kk:" in line)
    allowed = kk_line.split("allowed here: ")[1].rstrip(")").split(", ")
    assert "k" in allowed and "kk" not in allowed
    assert all(". Fix: " in line for line in issues.splitlines())


def test_unknown_backend_and_missing_file(tmp_path: Path) -> None:
    path = _write(
        tmp_path,
        """
        [models.target]
        backend = "toi"
        [prompts]
        source = "jsonl"
        path = "missing.jsonl"
        """,
    )
    issues = _issues(path)
    assert any(
        "models.target: unknown backend 'toi' (installed: dummy, hf, toy)" in i for i in issues
    )


def test_references_are_checked(tmp_path: Path) -> None:
    path = _write(
        tmp_path,
        """
        [models.target]
        backend = "toy"
        [[methods]]
        name = "baseline"
        [prompts]
        source = "jsonl"
        path = "missing.jsonl"
        [runs]
        baseline = "nothing"
        """,
    )
    issues = "\n".join(_issues(path))
    assert "prompts.path: file missing.jsonl not found" in issues
    assert "runs.baseline: 'nothing' is not one of the methods (baseline)" in issues


def test_toml_syntax_error_is_one_line(tmp_path: Path) -> None:
    path = _write(tmp_path, "[models.target\nbackend='toy'\n")
    (issue,) = _issues(path)
    assert "not valid TOML" in issue and "line 1" in issue


def test_missing_preset_name_suggests_listing() -> None:
    with pytest.raises(SpecbenchError, match="specbench presets"):
        load_preset("no-such-preset", discover_methods())


def test_jsonl_prompts_resolve_next_to_the_preset(tmp_path: Path) -> None:
    (tmp_path / "prompts.jsonl").write_text(
        '{"id": "a", "prompt": "hello", "category": "x"}\n{"turns": ["hi", "more"], "category": "y"}\n'
    )
    path = write_fast_preset(tmp_path)
    path.write_text(
        path.read_text().replace(
            'source = "inline"\nprompts = ["abc", "hello there", "xyz", "one two"]',
            'source = "jsonl"\npath = "prompts.jsonl"\ncategories = ["y"]',
        )
    )
    resolved = load_preset(str(path), discover_methods())
    prompts = resolved.preset.prompts.load(resolved.base_dir)
    assert [(p.id, p.turns, p.category) for p in prompts] == [("1", ("hi", "more"), "y")]


def test_overrides_parse_toml_values_and_change_the_hash(tmp_path: Path) -> None:
    assert parse_override("sampling.temperature=0.5") == (
        "sampling.temperature", 0.5, "--set sampling.temperature=0.5"
    )  # fmt: skip
    assert parse_override("output.path=plain/text.jsonl")[:2] == ("output.path", "plain/text.jsonl")
    assert parse_override("prompts.categories=['a','b']")[:2] == ("prompts.categories", ["a", "b"])
    raw = {"methods": [{"name": "speculative", "params": {"k": 2}}]}
    assert apply_overrides(raw, [("methods.0.params.k", 5)])["methods"][0]["params"]["k"] == 5
    assert raw["methods"][0]["params"]["k"] == 2  # the original is untouched

    path = write_fast_preset(tmp_path)
    registry = discover_methods()
    base = load_preset(str(path), registry)
    assert load_preset(str(path), registry).hash == base.hash
    hotter = load_preset(str(path), registry, [("sampling.temperature", 1.1)])
    assert hotter.preset.sampling.temperature == 1.1 and hotter.hash != base.hash
    elsewhere = load_preset(str(path), registry, [("output.path", "x.jsonl")])
    assert elsewhere.hash == base.hash  # where results go does not change what they are


def test_bad_override_is_reported_with_its_path(tmp_path: Path) -> None:
    path = write_fast_preset(tmp_path)
    with pytest.raises(
        PresetError, match=r"sampling.top_p: Input should be less than or equal to 1"
    ):
        load_preset(str(path), discover_methods(), [("sampling.top_p", 3)])
    with pytest.raises(SpecbenchError, match="KEY=VALUE"):
        parse_override("temperature")
    with pytest.raises(SpecbenchError, match="is a value, not a table"):
        load_preset(str(path), discover_methods(), [("sampling.temperature.x", 1)])
    with pytest.raises(SpecbenchError, match="has only 2 entries"):
        load_preset(str(path), discover_methods(), [("methods.5.params.k", 1)])


def test_select_methods(tmp_path: Path) -> None:
    resolved = load_preset(str(write_fast_preset(tmp_path)), discover_methods())
    only = select_methods(resolved, ["speculative"])
    assert [m.label for m in only.methods] == ["speculative"] and only.hash != resolved.hash
    with pytest.raises(SpecbenchError, match="it has: baseline, speculative"):
        select_methods(resolved, ["medusa"])


def test_a_stray_key_that_looks_like_methods_is_still_reported(tmp_path: Path) -> None:
    """``--set methods[0].k=2`` makes a top-level key "methods[0]": its error must not vanish."""
    path = write_fast_preset(tmp_path)
    with pytest.raises(PresetError) as caught:
        load_preset(str(path), discover_methods(), [("methods[0].params.k", 2)])
    assert "methods[0]: Extra inputs are not permitted" in caught.value.message


def test_validate_reports_a_backend_whose_extra_is_missing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import importlib.util

    from typer.testing import CliRunner

    from specbench.cli.main import app

    path = tmp_path / "needs-hf.toml"
    path.write_text(
        '[models.target]\nbackend = "hf"\nmodel = "some/model"\n'
        '[models.target.quantization]\nmethod = "bnb-4bit"\n'
        '[prompts]\nsource = "inline"\nprompts = ["x"]\n'
    )
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: None if name in ("transformers", "bitsandbytes") else real(name, *a),
    )
    result = CliRunner().invoke(app, ["validate", str(path)], env={"COLUMNS": "300"})
    assert result.exit_code == 2
    text = " ".join(result.output.split())
    assert "models.target.backend: the hf backend here needs transformers, bitsandbytes" in text
    assert 'pip install -c constraints/cpu.txt -e ".[hf,quant]"' in text


def test_methods_all_says_what_it_skipped_and_why(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from specbench.cli.main import app

    resolved = load_preset("quickstart", discover_methods())
    skipped = dict(resolved.skipped)
    assert "autojudge" in skipped and "specbench train" in skipped["autojudge"]
    no_draft = tmp_path / "target-only.toml"
    no_draft.write_text(
        'methods = "all"\n[models.target]\nbackend = "toy"\n'
        '[prompts]\nsource = "inline"\nprompts = ["x"]\n'
    )
    skipped = dict(load_preset(str(no_draft), discover_methods()).skipped)
    assert skipped["speculative"] == "needs a draft model"
    result = CliRunner().invoke(app, ["validate", "quickstart"], env={"COLUMNS": "300"})
    assert result.exit_code == 0
    assert 'methods = "all" skipped autojudge: lossy and needs a trained judge' in result.output
