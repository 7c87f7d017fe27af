"""The specbench command line, end to end."""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from presets_for_tests import write_fast_preset
from typer.testing import CliRunner

from specbench.cli.main import app
from specbench.records import SampleRecord, SummaryRecord, read_records
from specbench.testing import terminal_sigint

runner = CliRunner()


def invoke(*args: str):
    return runner.invoke(app, list(args))


def test_methods_lists_builtins_with_their_package() -> None:
    result = invoke("methods")
    assert result.exit_code == 0
    for text in ("baseline", "speculative", "specbench", "0.1.0", "target+draft"):
        assert text in result.output


def test_methods_shows_one_methods_parameters() -> None:
    result = invoke("methods", "speculative")
    assert result.exit_code == 0
    assert "Draft tokens proposed per target call" in result.output
    assert invoke("methods", "no-such-method").exit_code == 2


def test_presets_lists_and_shows() -> None:
    listing = invoke("presets")
    assert listing.exit_code == 0 and "quickstart" in listing.output
    shown = invoke("presets", "show", "quickstart")
    assert shown.exit_code == 0 and "[models.target]" in shown.output
    missing = invoke("presets", "show", "nope")
    assert missing.exit_code == 2 and "specbench presets" in missing.output


def test_validate_good_presets() -> None:
    result = invoke("validate")
    assert result.exit_code == 0
    assert "ok" in result.output and "quickstart.toml" in result.output


def test_validate_broken_preset_exits_2_with_path_and_fix(tmp_path: Path) -> None:
    path = tmp_path / "broken.toml"
    path.write_text(
        '[models.target]\nbackend = "toy"\n[[methods]]\nname = "speculative"\n'
        'params = { k = 0 }\n[prompts]\nsource = "inline"\nprompts = ["x"]\n'
    )
    result = invoke("validate", str(path))
    assert result.exit_code == 2
    assert (
        f"{path}: methods[0].params.k: Input should be greater than or equal to 1" in result.output
    )
    assert "needs a draft model" in result.output and "Fix:" in result.output


def test_run_writes_jsonl_and_prints_summary(tmp_path: Path) -> None:
    preset = write_fast_preset(tmp_path)
    out = tmp_path / "out.jsonl"
    result = invoke("run", "--preset", str(preset), "--output", str(out))
    assert result.exit_code == 0, result.output
    assert "speedup" in result.output and str(out) in result.output
    records = read_records(out)
    assert sum(isinstance(r, SampleRecord) for r in records) == 16
    assert sum(isinstance(r, SummaryRecord) for r in records) == 2


def test_run_flags_override_the_preset(tmp_path: Path) -> None:
    preset = write_fast_preset(tmp_path)
    out = tmp_path / "out.jsonl"
    result = invoke(
        "run",
        "-p",
        str(preset),
        "-o",
        str(out),
        "--quiet",
        "--runs",
        "1",
        "--limit",
        "2",
        "--max-new-tokens",
        "7",
        "--methods",
        "speculative",
        "--set",
        "methods.1.params.k=5",
    )
    assert result.exit_code == 0, result.output
    assert result.output.strip() == str(out)
    samples = [r for r in read_records(out) if isinstance(r, SampleRecord)]
    assert len(samples) == 2 and {s.method for s in samples} == {"speculative"}
    assert all(s.new_tokens == 7 for s in samples)
    assert max(len(s.position_verified) for s in samples) == 5


def test_run_with_broken_preset_exits_2(tmp_path: Path) -> None:
    preset = write_fast_preset(tmp_path)
    result = invoke("run", "-p", str(preset), "--temperature", "-1")
    assert result.exit_code == 2
    assert "sampling.temperature" in result.output
    assert invoke("run", "-p", "nonexistent").exit_code == 2


def test_report_reads_results(tmp_path: Path) -> None:
    preset = write_fast_preset(tmp_path)
    out = tmp_path / "out.jsonl"
    assert invoke("run", "-p", str(preset), "-o", str(out), "-q").exit_code == 0
    result = invoke("report", str(out))
    assert result.exit_code == 0
    assert "baseline" in result.output and "speculative" in result.output
    assert invoke("report", str(tmp_path / "missing.jsonl")).exit_code == 2


def test_example_plugin_runs_from_the_cli(tmp_path: Path) -> None:
    repo = Path(__file__).resolve().parent.parent
    preset = repo / "plugins" / "specbench-adaptive-k" / "adaptive.toml"
    out = tmp_path / "out.jsonl"
    result = invoke(
        "run",
        "-p",
        str(preset),
        "-o",
        str(out),
        "--runs",
        "1",
        "--set",
        "models.target.forward_ms=0",
    )
    assert result.exit_code == 0, result.output
    methods = {r.method for r in read_records(out) if isinstance(r, SampleRecord)}
    assert "adaptive-speculative" in methods


def _sample_lines(path: Path) -> int:
    if not path.exists():
        return 0
    return sum('"record":"sample"' in line for line in path.read_text().splitlines())


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")
def test_ctrl_c_keeps_records_and_the_printed_resume_command_works(tmp_path: Path) -> None:
    """The printed command reproduces every flag that changed the preset (here --runs and
    --set): resuming without them would be refused as a different preset."""
    preset = write_fast_preset(tmp_path, forward_ms=5.0, max_new_tokens=40)
    out = tmp_path / "out.jsonl"
    flags = ["--runs", "3", "--set", "sampling.top_p=0.9"]
    command = [sys.executable, "-m", "specbench", "run", "-p", str(preset), "-o", str(out), *flags]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    process = subprocess.Popen(
        command,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        preexec_fn=terminal_sigint,
    )
    deadline = time.monotonic() + 60
    while _sample_lines(out) < 3 and time.monotonic() < deadline:
        time.sleep(0.05)
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 130, stderr
    assert "interrupted during" in stderr and "--resume" in stderr
    kept = _sample_lines(out)
    assert 3 <= kept < 24
    for line in out.read_text().splitlines():
        json.loads(line)  # every line is whole

    printed = next(line for line in stderr.splitlines() if line.startswith("continue with: "))
    argv = shlex.split(printed.removeprefix("continue with: "))
    assert argv[:2] == ["specbench", "run"] and "--runs" in argv and "--set" in argv
    result = runner.invoke(app, argv[1:])
    assert result.exit_code == 0, result.output
    assert f"resumed: {kept} samples" in result.output
    samples = [r for r in read_records(out) if isinstance(r, SampleRecord)]
    keys = [(s.method, s.prompt_id, s.run) for s in samples]
    assert len(keys) == len(set(keys)) == 24


def test_ctrl_c_during_start_up_prints_one_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from specbench.cli import entry

    def interrupted() -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(entry, "command", interrupted)
    with pytest.raises(SystemExit) as exited:
        entry.main()
    assert exited.value.code == 130
    assert capsys.readouterr().err == "interrupted\n"


def test_help_shows_flags_without_a_value_type() -> None:
    from click.testing import CliRunner as ClickRunner

    from specbench.cli.entry import command

    for args in (["run", "--help"], ["audit", "--help"], ["--help"], ["report", "--help"]):
        result = ClickRunner().invoke(command(), args, terminal_width=120)
        assert result.exit_code == 0, result.output
        assert "<bool>" not in result.output
    shown = ClickRunner().invoke(command(), ["run", "--help"], terminal_width=120).output
    assert "<int>" in shown  # options that take a value still say what


def test_listings_never_truncate_the_names_a_user_types(monkeypatch: pytest.MonkeyPatch) -> None:
    """In a 100-column terminal every preset and catalogue name is printed whole."""
    import io

    from rich.console import Console

    from specbench.cli import models_cmd, presets_cmd
    from specbench.models.catalog import CATALOG
    from specbench.presets.schema import available_presets

    for module, names in ((presets_cmd, available_presets()), (models_cmd, CATALOG)):
        buffer = io.StringIO()
        narrow = Console(file=buffer, width=100, force_terminal=False)
        monkeypatch.setattr(module, "console", narrow)
        result = invoke("presets") if module is presets_cmd else invoke("models", "list")
        assert result.exit_code == 0, result.output
        rendered = buffer.getvalue()
        assert max(len(line) for line in rendered.splitlines()) <= 100
        for name in names:
            assert f" {name} " in rendered, name


def test_piped_output_prints_a_heartbeat_during_long_silent_phases(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """A model load or warm-up that reports nothing for HEARTBEAT_S still prints a line
    (elapsed time, samples and tokens so far), so piped logs never go quiet for minutes."""
    import io

    from rich.console import Console

    from specbench.cli import live
    from specbench.run.progress import Progress

    monkeypatch.setattr(live, "HEARTBEAT_S", 0.2)
    buffer = io.StringIO()
    piped = Console(file=buffer, width=200, force_terminal=False)
    with live.ProgressView(piped) as view:
        view(Progress("warmup", "warming up speculative (1)", tmp_path, processed=lambda: 1234))
        deadline = time.monotonic() + 10
        while "still" not in buffer.getvalue() and time.monotonic() < deadline:
            time.sleep(0.05)
    text = buffer.getvalue()
    assert text.splitlines()[0] == "warming up speculative (1)"
    assert "still warming up speculative (1) (" in text
    assert "elapsed, 0/0 samples done, 1234 tokens processed so far)" in text


# ----------------------------------------------------------------------------- errors name their source


@pytest.mark.parametrize(
    ("flag", "value", "field"),
    [
        ("--runs", "0", "runs.count"),
        ("--max-new-tokens", "-5", "sampling.max_new_tokens"),
        ("--temperature", "-1", "sampling.temperature"),
        ("--limit", "0", "prompts.limit"),
    ],
)
def test_a_bad_flag_value_names_the_flag_not_the_preset(
    tmp_path: Path, flag: str, value: str, field: str
) -> None:
    preset = write_fast_preset(tmp_path)
    result = invoke("run", "-p", str(preset), flag, value)
    assert result.exit_code == 2, result.output
    (line,) = [line for line in result.output.splitlines() if line.strip()]
    assert line.startswith(f"error: {flag} ") and f": {field}: " in line and "Fix:" in line
    assert str(preset) not in line


def test_a_bad_set_value_names_the_set_flag(tmp_path: Path) -> None:
    preset = write_fast_preset(tmp_path)
    result = invoke("audit", "-p", str(preset), "--set", "sampling.top_p=2")
    assert result.exit_code == 2, result.output
    assert "error: --set sampling.top_p=2: sampling.top_p: " in result.output


def test_validate_refuses_what_run_would_refuse_a_missing_prompt_extra(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "datasets", None)  # as if the hf extra were not installed
    (tmp_path / "p.csv").write_text("prompt\nhello\n")
    preset = tmp_path / "d.toml"
    preset.write_text(
        '[models.target]\nbackend = "toy"\n[prompts]\nsource = "dataset"\npath = "p.csv"\n'
    )
    result = invoke("validate", str(preset))
    assert result.exit_code == 2, result.output
    assert "prompt source 'dataset' needs the datasets library" in result.output
    # The fix is the README's install form in a clone: through the constraints file.
    assert 'pip install -c constraints/cpu.txt -e ".[hf]"' in result.output


def test_install_hints_use_the_constraints_file_in_a_clone(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from specbench import install_hints

    root = Path(install_hints.__file__).resolve().parents[1]
    assert (
        install_hints.install_extra("report") == 'pip install -c constraints/cpu.txt -e ".[report]"'
    )
    monkeypatch.chdir(tmp_path)
    assert install_hints.install_extra("report") == (
        f'pip install -c {root}/constraints/cpu.txt -e "{root}[report]"'
    )
    monkeypatch.setattr(install_hints, "source_checkout", lambda: None)
    assert install_hints.install_extra("report") == "pip install 'specbench[report]'"


def test_a_refused_resume_says_what_differs_and_how_to_resume_as_written(tmp_path: Path) -> None:
    preset = write_fast_preset(tmp_path)
    out = tmp_path / "r.jsonl"
    first = invoke(
        "run", "-p", str(preset), "--max-new-tokens", "8", "--runs", "1", "-o", str(out), "-q"
    )
    assert first.exit_code == 0, first.output
    refused = invoke("run", "-p", str(preset), "--sweep", "k=2,3", "-o", str(out), "--resume")
    assert refused.exit_code == 2, refused.output
    text = " ".join(refused.output.split())
    assert "runs.count: 1 in the file, 2 now" in text
    assert "sampling.max_new_tokens: 8 in the file, 24 now" in text
    assert "hash" not in text
    command = text.split("resume it as written with `")[1].split("`")[0]
    assert command == shlex.join(
        ["specbench", "run", "--preset", str(preset), "--runs", "1", "--max-new-tokens", "8",
         "--output", str(out), "--resume"]
    )  # fmt: skip
    again = invoke(*shlex.split(command)[1:])
    assert again.exit_code == 0, again.output


def test_report_says_what_an_audit_or_prompt_file_is(tmp_path: Path) -> None:
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text('{"prompt": "hello", "id": "1"}\n')
    result = invoke("report", str(prompts))
    assert result.exit_code == 2
    assert "is a prompt file (line 1 holds a prompt), not results" in result.output
    assert "validation error" not in result.output and "union" not in result.output
    preset = write_fast_preset(tmp_path)
    audit = tmp_path / "audit.jsonl"
    done = invoke(
        "audit", "-p", str(preset), "--samples", "40", "--tokens", "2", "-o", str(audit), "-q"
    )
    assert done.exit_code in (0, 1), done.output
    result = invoke("report", str(audit))
    assert result.exit_code == 2
    assert "is an audit file (written by specbench audit)" in result.output


# ----------------------------------------------------------------------------- backends and --set


@pytest.mark.parametrize("backend", ["toy", "hf", "dummy"])
def test_backends_lists_every_field_of_a_backend_with_its_default(backend: str) -> None:
    from specbench.models.backends import discover_backends

    spec = discover_backends().get(backend).Spec
    result = runner.invoke(app, ["backends", backend], env={"COLUMNS": "250"})
    assert result.exit_code == 0, result.output
    for name, info in spec.model_fields.items():
        if name == "backend":
            continue
        assert f"│ {name} " in result.output, name
        if not info.is_required():
            assert repr(info.get_default(call_default_factory=True)) in result.output
    listing = runner.invoke(app, ["backends"], env={"COLUMNS": "250"})
    assert listing.exit_code == 0 and "toy" in listing.output and "hf" in listing.output
    assert runner.invoke(app, ["backends", "nope"]).exit_code == 2


def test_the_toy_backend_documents_a_pair_that_shows_speculation() -> None:
    result = runner.invoke(app, ["backends", "toy"], env={"COLUMNS": "250"})
    for field in ("forward_ms", "distance", "token_ms", "eos_bias", "sharpness", "noise_seed"):
        assert field in result.output
    assert "speculation at work" in " ".join(result.output.split())


def test_set_switches_the_prompt_source_and_takes_json_and_labels(tmp_path: Path) -> None:
    from specbench.plugins import discover_methods
    from specbench.presets.schema import load_preset, parse_override

    preset = write_fast_preset(tmp_path)  # inline prompts
    (tmp_path / "q.jsonl").write_text('{"prompt": "one"}\n{"prompt": "two"}\n')
    sets = [
        f"prompts.path={tmp_path / 'q.jsonl'}",
        'methods.speculative.params={"k": 6}',
        "sampling.top_k=null",
    ]
    resolved = load_preset(str(preset), discover_methods(), [parse_override(s) for s in sets])
    assert resolved.preset.prompts.source == "jsonl"
    assert [p.text for p in resolved.preset.prompts.load(tmp_path)] == ["one", "two"]
    assert resolved.methods[1].params.k == 6  # type: ignore[attr-defined]
    switched = load_preset(
        str(preset), discover_methods(), [parse_override("prompts.source=gsm8k")]
    )
    assert switched.preset.prompts.source == "gsm8k"
    table = load_preset(
        str(preset), discover_methods(), [parse_override("methods.1.params={ k = 2 }")]
    )
    assert table.methods[1].params.k == 2  # type: ignore[attr-defined]
    result = invoke("run", "-p", str(preset), "--set", "methods.nosuch.params.k=2")
    assert (
        result.exit_code == 2
        and "no entry of methods has the label or name 'nosuch'" in result.output
    )


def test_run_help_documents_the_set_syntax() -> None:
    result = runner.invoke(app, ["run", "--help"], env={"COLUMNS": "200"})
    text = " ".join(result.output.replace("│", " ").split())
    assert "methods.speculative.params.k=8" in text and 'JSON ({"k": 4})' in text
    assert "prompts.path=q.jsonl" in text


@pytest.mark.parametrize("width", [60, 80, 100, 250])
def test_a_narrow_terminal_never_cuts_a_number_in_the_summary(tmp_path: Path, width: int) -> None:
    import io

    from rich.console import Console

    from specbench.cli.tables import summary_table
    from specbench.report.results import load_results

    out = tmp_path / "r.jsonl"
    done = invoke("run", "-p", str(write_fast_preset(tmp_path)), "-o", str(out), "-q")
    assert done.exit_code == 0, done.output
    summaries = load_results(out).summaries
    console = Console(width=width, file=io.StringIO(), record=True)
    console.print(summary_table(summaries, "t", width))
    text = console.export_text()
    assert "…" not in text
    assert all(
        line.rstrip()[-1] in "┓┃┩│┘" for line in text.splitlines()[1:] if "━" in line or "│" in line
    )
    shown = " ".join(text.split())
    for s in summaries:  # every speedup and median that is shown is shown whole
        assert f"{s.tokens_per_sec_median:.1f}" in shown
    if width <= 60:
        assert "Left out to fit" in shown


def test_a_toy_pair_that_cannot_show_speculation_is_named_in_validate_and_run(
    tmp_path: Path,
) -> None:
    """A toy target that costs nothing and a draft equal to the target: valid, but a
    benchmark of them means little, and the user is told so (the quick start is not)."""
    preset = tmp_path / "plain.toml"
    preset.write_text(
        '[models.target]\nbackend = "toy"\n[models.draft]\nbackend = "toy"\n'
        '[[methods]]\nname = "baseline"\n[[methods]]\nname = "speculative"\n'
        '[prompts]\nsource = "inline"\nprompts = ["a b"]\n[sampling]\nmax_new_tokens = 4\n'
        "[runs]\nwarmup = 0\n"
    )
    for args in (
        ["validate", str(preset)],
        ["run", "-p", str(preset), "-o", str(tmp_path / "o.jsonl")],
    ):
        result = runner.invoke(app, args, env={"COLUMNS": "400"})
        assert result.exit_code == 0, result.output
        assert "models.target: a toy target with forward_ms = 0" in result.output
        assert "models.draft: a toy draft with distance = 0" in result.output
    quick = runner.invoke(app, ["validate", "quickstart"], env={"COLUMNS": "400"})
    assert "a toy target with" not in quick.output and "a toy draft with" not in quick.output


def test_train_is_one_command_and_older_spellings_say_so() -> None:
    """`specbench train` trains what any method needs; `judge train` and `heads train` still
    run it, with a note naming the new command."""
    plain = CliRunner().invoke(app, ["train", "-p", "quickstart"])
    assert plain.exit_code == 2
    assert "has no method that trains anything" in " ".join(plain.output.split())
    for group in ("judge", "heads"):
        older = CliRunner().invoke(app, [group, "train", "-p", "quickstart"])
        assert older.exit_code == 2
        assert f"`specbench {group} train` is now `specbench train`" in older.output
