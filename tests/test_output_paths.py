"""Outputs that cannot be written: one line naming the path, the problem and the fix, exit
code 2, before any model loads; missing folders are made only where that is safe."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from presets_for_tests import write_fast_preset
from typer.testing import CliRunner

import specbench.run.plan as plan_module
from specbench.cli.main import app
from specbench.errors import SpecbenchError
from specbench.run.output_paths import check_output_dir, check_output_file

runner = CliRunner()


@pytest.fixture
def no_model_loads(monkeypatch: pytest.MonkeyPatch) -> None:
    """A model load fails the test: the output checks must come first."""

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("a model was loaded before the output path was checked")

    # Every command loads its models through the one session plan.
    monkeypatch.setattr(plan_module, "load_models", refuse)


def _bad_file_paths(tmp_path: Path) -> dict[str, tuple[Path, str]]:
    """Each case: a path and what the error must say of it."""
    regular = tmp_path / "plain.txt"
    regular.write_text("x")
    folder = tmp_path / "empty-folder"
    folder.mkdir()
    return {
        "permission denied": (Path("/sys/specbench-results.jsonl"), "Permission denied"),
        "below a regular file": (regular / "out.jsonl", "is a file, so nothing can be created"),
        "a folder given for a file": (folder, "is a folder, not a file"),
        "a pseudo-filesystem": (Path("/proc/specbench/out.jsonl"), "does not exist"),
        "not a regular file": (Path("/dev/null"), "is not a regular file"),
        "a new folder at the root": (Path("/specbench-typo/out.jsonl"), "does not exist"),
    }


def _one_error_line(output: str, path: Path, flag: str) -> None:
    # Notes about the preset (a toy target that costs nothing) may come first; they are not
    # part of the error.
    lines = [line for line in output.splitlines() if line.strip() and not line.startswith("note:")]
    assert len(lines) == 1, output
    assert lines[0].startswith("error: ") and flag in lines[0] and str(path) in lines[0]
    assert "Fix:" in lines[0] and "Traceback" not in output


@pytest.mark.parametrize(
    "case",
    [
        "permission denied",
        "below a regular file",
        "a folder given for a file",
        "a pseudo-filesystem",
        "not a regular file",
        "a new folder at the root",
    ],
)
@pytest.mark.parametrize("command", ["run", "audit"])
def test_run_and_audit_refuse_an_output_they_cannot_write(
    tmp_path: Path, case: str, command: str, no_model_loads: None
) -> None:
    path, reason = _bad_file_paths(tmp_path)[case]
    preset = write_fast_preset(tmp_path)
    result = runner.invoke(app, [command, "-p", str(preset), "-o", str(path)])
    assert result.exit_code == 2, result.output
    _one_error_line(result.output, path, "--output")
    assert reason in result.output
    assert "already holds results" not in result.output
    assert not Path("/specbench-typo").exists()


def test_the_preset_output_pattern_is_named_as_the_source(
    tmp_path: Path, no_model_loads: None
) -> None:
    preset = write_fast_preset(tmp_path, output="/proc/specbench/{preset}.jsonl")
    result = runner.invoke(app, ["run", "-p", str(preset)])
    assert result.exit_code == 2, result.output
    assert f"output.path of {preset}" in result.output and "Fix:" in result.output


def test_a_study_output_that_is_a_file_is_refused(tmp_path: Path, no_model_loads: None) -> None:
    first, second = write_fast_preset(tmp_path, "one"), write_fast_preset(tmp_path, "two")
    taken = tmp_path / "taken"
    taken.write_text("x")
    result = runner.invoke(app, ["run", "-p", str(first), "-p", str(second), "-o", str(taken)])
    assert result.exit_code == 2, result.output
    _one_error_line(result.output, taken, "--output")


@pytest.fixture
def results_file(tmp_path: Path) -> Path:
    preset = write_fast_preset(tmp_path)
    out = tmp_path / "results.jsonl"
    result = runner.invoke(app, ["run", "-p", str(preset), "-o", str(out), "-q", "--runs", "1"])
    assert result.exit_code == 0, result.output
    return out


@pytest.mark.parametrize(
    ("flag", "path", "reason"),
    [
        ("--plots", Path("/proc/specbench-plots"), "does not exist"),
        ("--plots", Path("/specbench-typo/plots"), "does not exist"),
        ("--html", Path("/sys/report.html"), "Permission denied"),
        ("--html", Path("/proc/specbench/report.html"), "does not exist"),
    ],
)
def test_report_refuses_plot_and_html_paths_it_cannot_write(
    results_file: Path, flag: str, path: Path, reason: str
) -> None:
    result = runner.invoke(app, ["report", str(results_file), flag, str(path)])
    assert result.exit_code == 2, result.output
    _one_error_line(result.output, path, flag)
    assert reason in result.output
    assert not Path("/specbench-typo").exists()


def test_report_refuses_a_file_for_the_plot_folder_and_a_folder_for_the_page(
    results_file: Path, tmp_path: Path
) -> None:
    result = runner.invoke(app, ["report", str(results_file), "--plots", str(results_file)])
    assert result.exit_code == 2 and "is a file, not a folder" in result.output, result.output
    result = runner.invoke(app, ["report", str(results_file), "--html", str(tmp_path)])
    assert result.exit_code == 2 and "is a folder, not a file" in result.output, result.output


def test_missing_folders_are_made_below_the_working_and_temporary_folders(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    check_output_file(Path("results/deep/x.jsonl"), "--output")
    assert (tmp_path / "results" / "deep").is_dir()
    assert not (tmp_path / "results" / "deep" / "x.jsonl").exists()  # a check writes nothing
    check_output_dir(tmp_path / "plots" / "a", "--plots")
    assert (tmp_path / "plots" / "a").is_dir()
    assert list((tmp_path / "plots" / "a").iterdir()) == []


def test_an_existing_results_file_is_left_as_it_was(tmp_path: Path) -> None:
    path = tmp_path / "kept.jsonl"
    path.write_text(json.dumps({"a": 1}) + "\n")
    check_output_file(path, "--output")
    assert path.read_text() == json.dumps({"a": 1}) + "\n"
    with pytest.raises(SpecbenchError, match="is a folder"):
        check_output_file(tmp_path, "--output")


def test_checking_a_new_output_never_creates_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A reader polling for the results file (a test, ``tail -F``) must not see it appear
    and vanish while the run checks that it can write there."""
    out = tmp_path / "results.jsonl"
    opened = Path.open

    def watched(self: Path, *args: object, **kwargs: object):  # type: ignore[no-untyped-def]
        assert self != out, "the check created the output file itself"
        return opened(self, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(Path, "open", watched)
    check_output_file(out, "--output")
    assert not out.exists() and list(tmp_path.iterdir()) == []
