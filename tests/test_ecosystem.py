"""What users bring: YAML/JSON presets, studies of several presets, experiment trackers, an
HTML report, chat-format and SPEED-Bench prompt files."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
from html.parser import HTMLParser
from pathlib import Path

import pytest
from helpers import fake_distribution
from typer.testing import CliRunner

from specbench.cli.main import app
from specbench.plugins import discover_methods
from specbench.presets.schema import PresetError, load_preset
from specbench.records import SampleRecord, read_records
from specbench.report.results import load_results

runner = CliRunner()

TOY = """
[models.target]
backend = "toy"
vocab_size = 32
order = 1
seed = {seed}
[models.draft]
backend = "toy"
vocab_size = 32
order = 1
seed = {seed}
distance = 0.6
[[methods]]
name = "baseline"
[[methods]]
name = "speculative"
params = {{ k = 3 }}
[prompts]
source = "inline"
prompts = ["abc", "hello there", "xyz"]
[sampling]
temperature = 0.0
max_new_tokens = 16
[runs]
count = 2
warmup = 0
"""


def _toy(tmp_path: Path, name: str, seed: int = 1) -> Path:
    path = tmp_path / f"{name}.toml"
    path.write_text(TOY.format(seed=seed))
    return path


# ----------------------------------------------------------------------------- preset formats


def test_the_shipped_yaml_preset_validates_and_runs(tmp_path: Path) -> None:
    resolved = load_preset("toy-yaml", discover_methods(), [("runs.count", 1)])
    assert [m.label for m in resolved.methods] == ["baseline", "speculative-k2", "speculative-k4"]
    out = tmp_path / "yaml.jsonl"
    result = runner.invoke(app, ["run", "-p", "toy-yaml", "--runs", "1", "-o", str(out), "-q"])
    assert result.exit_code == 0, result.output
    samples = [r for r in read_records(out) if isinstance(r, SampleRecord)]
    assert len(samples) == 9 and all(s.matches_baseline for s in samples if s.method != "baseline")


@pytest.mark.parametrize("fmt", ["yaml", "json", "toml"])
def test_convert_round_trips_to_the_same_effective_preset(tmp_path: Path, fmt: str) -> None:
    registry = discover_methods()
    original = load_preset("toy-sampling", registry)
    out = tmp_path / f"toy-sampling.{fmt}"
    result = runner.invoke(app, ["presets", "convert", "toy-sampling", "--to", fmt, "-o", str(out)])
    assert result.exit_code == 0, result.output
    converted = load_preset(str(out), registry)
    assert converted.hash == original.hash
    back = tmp_path / "back.toml"
    runner.invoke(app, ["presets", "convert", str(out), "--to", "toml", "-o", str(back)])
    assert load_preset(str(back), registry).hash == original.hash


def test_yaml_errors_name_file_line_field_and_fix(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(
        "models:\n  target:\n    backend: toy\n  draft:\n    backend: toy\n"
        "methods:\n  - name: baseline\n  - name: speculative\n    params:\n      k: 0\n"
        "prompts:\n  source: inline\n  prompts: [x]\nsampling:\n  temperature: -1\n"
    )
    with pytest.raises(PresetError) as error:
        load_preset(str(path), discover_methods())
    text = str(error.value)
    assert f"{path}:10: methods[1].params.k: Input should be greater than or equal to 1" in text
    assert f"{path}:15: sampling.temperature" in text and "Fix:" in text
    broken = tmp_path / "syntax.yaml"
    broken.write_text("models:\n  target: [unclosed\nmethods: x\n")
    with pytest.raises(PresetError, match=rf"{re.escape(str(broken))}:\d+: not valid YAML"):
        load_preset(str(broken), discover_methods())


def test_json_preset_and_presets_listing_include_every_format(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "presets").mkdir()
    (tmp_path / "presets" / "mine.json").write_text(
        json.dumps(
            {
                "models": {"target": {"backend": "toy"}},
                "prompts": {"source": "inline", "prompts": ["x"]},
            }
        )
    )
    listing = runner.invoke(app, ["presets"], env={"COLUMNS": "250"})
    assert "mine" in listing.output and "toy-yaml" in listing.output
    assert load_preset("mine", discover_methods()).name == "mine"


# ----------------------------------------------------------------------------- studies


def test_a_three_preset_study_runs_resumes_and_reports(tmp_path: Path, monkeypatch) -> None:
    presets = [str(_toy(tmp_path, f"pair{i}", seed=i)) for i in (1, 2, 3)]
    out = tmp_path / "study"
    import specbench.run.runner as runner_module

    calls = {"n": 0}
    original = runner_module._Context.time_unit

    def interrupt_later(self, unit, method, baseline):  # type: ignore[no-untyped-def]
        calls["n"] += 1
        if calls["n"] == 27:  # 12 units per preset: in the middle of the third
            raise KeyboardInterrupt
        return original(self, unit, method, baseline)

    monkeypatch.setattr(runner_module._Context, "time_unit", interrupt_later)
    args = ["run", *[a for p in presets for a in ("-p", p)], "-o", str(out)]
    first = runner.invoke(app, args)
    assert first.exit_code == 130, first.output
    index = json.loads((out / "index.json").read_text())
    assert [e["status"] for e in index["entries"]] == ["finished", "finished", "interrupted"]
    monkeypatch.setattr(runner_module._Context, "time_unit", original)
    second = runner.invoke(app, [*args, "--resume"])
    assert second.exit_code == 0, second.output
    index = json.loads((out / "index.json").read_text())
    assert [e["status"] for e in index["entries"]] == ["finished"] * 3
    for entry in index["entries"]:
        samples = [r for r in read_records(out / entry["file"]) if isinstance(r, SampleRecord)]
        keys = [(s.method, s.prompt_id, s.run) for s in samples]
        assert len(keys) == len(set(keys)) == 12
    report = runner.invoke(
        app, ["report", str(out), "--plots", str(tmp_path / "plots")], env={"COLUMNS": "250"}
    )
    assert report.exit_code == 0, report.output
    assert "All files" in report.output and report.output.count("pair") >= 3
    assert (tmp_path / "plots" / "speedup.png").exists()


def test_a_study_file_with_sets_and_sweeps(tmp_path: Path) -> None:
    _toy(tmp_path, "base")
    study = tmp_path / "study.yaml"
    study.write_text(
        "name: sweep-study\nentries:\n"
        f"  - preset: {tmp_path / 'base.toml'}\n    label: short\n    set: ['sampling.max_new_tokens=8']\n"
        f"  - preset: {tmp_path / 'base.toml'}\n    label: ks\n    sweep: ['k=2,4']\n"
    )
    out = tmp_path / "s"
    result = runner.invoke(app, ["run", "--study", str(study), "-o", str(out), "--runs", "1", "-q"])
    assert result.exit_code == 0, result.output
    short = load_results(out / "01-short.jsonl")
    assert all(s.new_tokens <= 8 for s in short.samples)
    labels = {s.method for s in load_results(out / "02-ks.jsonl").samples}
    assert labels == {"baseline", "speculative-k=2", "speculative-k=4"}


# ----------------------------------------------------------------------------- trackers


def _run_tracked(tmp_path: Path, tracker: str) -> Path:
    out = tmp_path / "tracked.jsonl"
    result = runner.invoke(
        app, ["run", "-p", str(_toy(tmp_path, "tracked")), "-o", str(out), "--track", tracker, "-q"]
    )
    assert result.exit_code == 0, result.output
    assert "warning" not in result.output
    return out


def test_mlflow_logs_params_steps_summaries_and_artifacts(tmp_path: Path, monkeypatch) -> None:
    mlflow = pytest.importorskip("mlflow")
    uri = (tmp_path / "mlruns").as_uri()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    out = _run_tracked(tmp_path, "mlflow")
    client = mlflow.tracking.MlflowClient(tracking_uri=uri)
    (run,) = client.search_runs([client.get_experiment_by_name("specbench").experiment_id])
    assert run.info.status == "FINISHED"
    assert run.data.params["sampling.max_new_tokens"] == "16"
    assert run.data.params["methods.speculative.params.k"] == "3"
    loaded = {s.method: s for s in load_results(out).summaries}
    assert run.data.metrics["summary/speculative/speedup"] == pytest.approx(
        loaded["speculative"].speedup
    )
    history = client.get_metric_history(run.info.run_id, "speculative/tokens_per_sec")
    assert sorted(m.step for m in history) == list(range(6))
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert "tracked.jsonl" in artifacts and "speedup.png" in artifacts


def _wandb_inspect(run_dir: Path, *flags: str) -> str:
    """W&B's own reader of an offline run's ``.wandb`` log: ``wandb leet inspect --json``."""
    wandb_cli = Path(sys.executable).with_name("wandb")
    done = subprocess.run(
        [str(wandb_cli), "leet", "inspect", "--json", *flags, str(run_dir)],
        capture_output=True, text=True, timeout=120, check=True,
    )  # fmt: skip
    return done.stdout


def _wandb_records(run_dir: Path) -> list[dict]:  # type: ignore[type-arg]
    """Every record of the log, one JSON object each (``type`` names its kind)."""
    return [json.loads(line) for line in _wandb_inspect(run_dir).splitlines() if line.strip()]


def _wandb_state(run_dir: Path) -> dict:  # type: ignore[type-arg]
    """The run as W&B folds its log: state, config and the latest summary."""
    return json.loads(_wandb_inspect(run_dir, "--summary"))  # type: ignore[no-any-return]


def _offline_run(tmp_path: Path, monkeypatch) -> Path:
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    return tmp_path / "wandb"


def _check_wandb_run(run_dir: Path, out: Path) -> None:
    state = _wandb_state(run_dir)
    assert state["state"] == "finished"
    loaded = {s.method: s for s in load_results(out).summaries}
    assert state["summary"]["speculative/speedup"] == pytest.approx(loaded["speculative"].speedup)
    assert state["config"]["sampling.max_new_tokens"] == "16"
    assert state["config"]["methods.speculative.params.k"] == "3"
    kinds = [record["type"] for record in _wandb_records(run_dir)]
    assert kinds.count("history") == 12  # one step per sample
    assert "artifact" in kinds


def test_wandb_offline_logs_config_steps_and_summary(tmp_path: Path, monkeypatch) -> None:
    pytest.importorskip("wandb")
    folder = _offline_run(tmp_path, monkeypatch)
    out = _run_tracked(tmp_path, "wandb")
    (run_dir,) = folder.glob("offline-run-*")
    _check_wandb_run(run_dir, out)


def test_the_wandb_log_is_whole_when_the_run_returns_even_if_wandb_core_lags(
    tmp_path: Path, monkeypatch
) -> None:
    """``run.finish()`` returns before wandb-core has written the offline log (the core
    writes its last block when it closes the run, on a message nobody waits for): here the
    core is paused for a second at that moment, as a loaded machine can pause it. The tracker
    must wait for the core, or the log reads as its bare header (the flaky failure once seen
    in a fresh clone)."""
    pytest.importorskip("wandb")
    from wandb.sdk.lib.service import service_connection

    folder = _offline_run(tmp_path, monkeypatch)
    inform_finish = service_connection.ServiceConnection.inform_finish

    def pause_core_then_inform(self, run_id: str) -> None:  # type: ignore[no-untyped-def]
        cores = _wandb_core_processes()
        assert cores, "no wandb-core process of this test found"
        for pid in cores:
            os.kill(pid, signal.SIGSTOP)
        threading.Timer(1.0, lambda: [os.kill(pid, signal.SIGCONT) for pid in cores]).start()
        inform_finish(self, run_id)

    monkeypatch.setattr(
        service_connection.ServiceConnection, "inform_finish", pause_core_then_inform
    )
    out = _run_tracked(tmp_path, "wandb")
    (log,) = folder.glob("offline-run-*/*.wandb")
    assert log.stat().st_size > 1024, "the tracker returned before wandb-core wrote the log"
    _check_wandb_run(log.parent, out)


def _wandb_core_processes() -> list[int]:
    """wandb-core services started by this process (their command line names our pid)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if argv and argv[0].endswith(b"wandb-core") and str(os.getpid()).encode() in argv:
            pids.append(int(entry.name))
    return pids


def test_a_failing_tracker_warns_once_and_never_stops_the_run(tmp_path: Path, monkeypatch) -> None:
    root = tmp_path / "site"
    fake_distribution(
        root,
        "broken-tracker",
        "[specbench.trackers]\nbroken = broken_tracker:Broken\n",
        {
            "broken_tracker": """
            from specbench.tracking import Tracker
            class Broken(Tracker):
                name = "broken"
                def start(self, *a): pass
                def log_metrics(self, *a): raise ConnectionError("server gone")
                def log_summary(self, *a): raise AssertionError("never called")
                def log_artifact(self, *a): raise AssertionError("never called")
                def finish(self, *a): raise AssertionError("never called")
            """
        },
    )
    monkeypatch.syspath_prepend(str(root))
    out = tmp_path / "t.jsonl"
    result = runner.invoke(
        app, ["run", "-p", str(_toy(tmp_path, "t")), "-o", str(out), "--track", "broken", "-q"]
    )
    assert result.exit_code == 0, result.output
    assert result.output.count("warning: broken tracking stopped (log failed: ConnectionError") == 1
    assert len([r for r in read_records(out) if isinstance(r, SampleRecord)]) == 12


def test_unknown_tracker_is_a_one_line_error(tmp_path: Path) -> None:
    result = runner.invoke(app, ["run", "-p", str(_toy(tmp_path, "x")), "--track", "nope"])
    assert result.exit_code == 2 and "no tracker named 'nope'" in result.output


# ----------------------------------------------------------------------------- HTML report


class _Page(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tables: dict[str, list[list[str]]] = {}
        self.images: list[str] = []
        self.scripts = 0
        self.external: list[str] = []
        self._table: str | None = None
        self._row: list[str] | None = None
        self._cell: list[str] | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = dict(attrs)
        if tag == "table":
            self._table = values.get("id") or ""
            self.tables[self._table] = []
        elif tag == "tr" and self._table is not None:
            self._row = []
        elif tag in ("td", "th") and self._row is not None:
            self._cell = []
        elif tag == "img":
            self.images.append(values.get("src") or "")
        elif tag == "script":
            self.scripts += 1
        for name in ("src", "href"):
            value = values.get(name) or ""
            if value.startswith(("http:", "https:", "//")):
                self.external.append(value)

    def handle_endtag(self, tag: str) -> None:
        if tag in ("td", "th") and self._cell is not None and self._row is not None:
            self._row.append("".join(self._cell).strip())
            self._cell = None
        elif tag == "tr" and self._row is not None and self._table is not None:
            self.tables[self._table].append(self._row)
            self._row = None
        elif tag == "table":
            self._table = None

    def handle_data(self, data: str) -> None:
        if self._cell is not None:
            self._cell.append(data)


@pytest.fixture
def two_results(tmp_path: Path) -> list[Path]:
    out = []
    for seed in (1, 2):
        path = tmp_path / f"r{seed}.jsonl"
        result = runner.invoke(
            app, ["run", "-p", str(_toy(tmp_path, f"r{seed}", seed)), "-o", str(path), "-q"]
        )
        assert result.exit_code == 0
        out.append(path)
    return out


def test_html_report_is_self_contained_and_shows_the_jsonl_numbers(
    two_results: list[Path], tmp_path: Path
) -> None:
    html_path = tmp_path / "report.html"
    result = runner.invoke(
        app, ["report", *map(str, two_results), "--html", str(html_path), "--no-plots"]
    )
    assert result.exit_code == 0, result.output
    page = _Page()
    page.feed(html_path.read_text())
    assert page.scripts == 0 and page.external == []
    assert page.images and all(src.startswith("data:image/png;base64,") for src in page.images)
    summary = page.tables["summary-0"]
    header, rows = summary[0], {row[0]: row for row in summary[1:]}
    loaded = {s.method: s for s in load_results(two_results[0]).summaries}
    spec = loaded["speculative"]
    cells = dict(zip(header, rows["speculative"], strict=True))
    assert cells["speedup [95% CI]"].startswith(f"{spec.speedup:.2f}x")
    assert cells["tokens/call"] == f"{spec.avg_tokens_per_step:.2f}"
    assert cells["n"] == str(spec.samples)
    assert "profile-0" in page.tables and "comparison" in page.tables
    assert "torch" in html_path.read_text()  # the run environment is there


@pytest.mark.browser
def test_html_report_renders_in_a_real_browser(two_results: list[Path], tmp_path: Path) -> None:
    """Headless Chromium (``nox -s browser`` installs it): no console errors, the tables show
    the JSONL's numbers, and a screenshot is saved."""
    webdriver = pytest.importorskip("selenium.webdriver")
    from selenium.webdriver.common.by import By

    html_path = tmp_path / "report.html"
    result = runner.invoke(
        app, ["report", *map(str, two_results), "--html", str(html_path), "--no-plots"]
    )
    assert result.exit_code == 0
    options = webdriver.ChromeOptions()
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--window-size=1300,1800"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    binary = os.environ.get("CHROMIUM_BINARY", "/usr/bin/chromium")
    if Path(binary).exists():
        options.binary_location = binary
    service = webdriver.ChromeService(
        executable_path=os.environ.get("CHROMEDRIVER", "/usr/bin/chromedriver")
    )
    driver = webdriver.Chrome(options=options, service=service)
    try:
        driver.get(html_path.as_uri())
        logs = driver.get_log("browser")
        assert [entry for entry in logs if entry["level"] == "SEVERE"] == []
        spec = {s.method: s for s in load_results(two_results[0]).summaries}["speculative"]
        row = driver.find_element(By.CSS_SELECTOR, '#summary-0 tr[data-row="speculative"]')
        assert f"{spec.speedup:.2f}x" in row.text and f"{spec.avg_tokens_per_step:.2f}" in row.text
        images = driver.find_elements(By.TAG_NAME, "img")
        assert images and all(
            driver.execute_script("return arguments[0].naturalWidth", i) > 0 for i in images
        )
        shot = Path(os.environ.get("SPECBENCH_SCREENSHOT", tmp_path / "report.png"))
        shot.parent.mkdir(parents=True, exist_ok=True)
        assert driver.save_screenshot(str(shot)) and shot.stat().st_size > 10_000
    finally:
        driver.quit()


# ----------------------------------------------------------------------------- prompt files


def test_chat_messages_in_jsonl_become_turns_and_a_system_prompt(tmp_path: Path) -> None:
    from specbench.prompts.sources import JsonlPromptSet

    (tmp_path / "chat.jsonl").write_text(
        json.dumps(
            {
                "id": "c1",
                "messages": [
                    {"role": "system", "content": "be brief"},
                    {"role": "user", "content": "hi"},
                    {"role": "assistant", "content": "hello"},
                    {"role": "user", "content": "bye"},
                ],
            }
        )
        + "\n"
    )
    (prompt,) = JsonlPromptSet(path="chat.jsonl").load(tmp_path)
    assert prompt.turns == ("hi", "bye") and prompt.system == "be brief" and prompt.id == "c1"


def test_speed_bench_parquet_and_chat_parquet_through_the_dataset_source(tmp_path: Path) -> None:
    pytest.importorskip("datasets")
    pyarrow = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    from specbench.prompts.sources import DatasetPromptSet

    speed = pyarrow.table(
        {
            "question_id": ["q1", "q2"],
            "category": ["coding", "math"],
            "sub_category": ["py", "alg"],
            "turns": [["write a loop"], ["2+2?", "and 3+3?"]],
            "source": ["x", "y"],
            "src_id": ["1", "2"],
            "difficulty": ["easy", "easy"],
            "multiturn": [False, True],
        }
    )
    pq.write_table(speed, tmp_path / "qualitative.parquet")
    prompts = DatasetPromptSet(
        source="dataset",
        path="qualitative.parquet",
        turns_field="turns",
        id_field="question_id",
        category_field="category",
    ).load(tmp_path)
    assert [(p.id, p.category, p.turns) for p in prompts] == [
        ("q1", "coding", ("write a loop",)),
        ("q2", "math", ("2+2?", "and 3+3?")),
    ]
    chat = pyarrow.table(
        {"messages": [[{"role": "system", "content": "s"}, {"role": "user", "content": "u"}]]}
    )
    pq.write_table(chat, tmp_path / "chat.parquet")
    (prompt,) = DatasetPromptSet(
        source="dataset", path="chat.parquet", messages_field="messages"
    ).load(tmp_path)
    assert prompt.turns == ("u",) and prompt.system == "s"
