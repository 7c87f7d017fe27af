"""Plugins add tasks (how outputs are scored) and CLI commands through entry points, like
methods and backends: one door, and a broken plugin is named, never silently dropped."""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers import fake_distribution
from typer.testing import CliRunner

from specbench.prompts.prompt import Prompt
from specbench.prompts.sources import InlinePromptSet, source_plugins
from specbench.prompts.tasks import task_for, task_registry, tasks

ENTRY_POINTS = """
[specbench.tasks]
last-word = hooked:LastWordTask
broken-task = hooked:Missing

[specbench.commands]
hello = hooked:HelloCommands

[specbench.prompt_sources]
numbers = hooked:NumberPrompts
broken-source = hooked:Missing
"""

MODULE = '''
from typing import Literal

from pydantic import Field

from specbench.api import CommandPlugin, Prompt, PromptSource, Score, Task


class LastWordTask(Task):
    name = "last-word"

    def answer(self, prompt, text):
        return text.split()[-1] if text.split() else None

    def score(self, prompt, text):
        want = prompt.reference.get("answer")
        return None if want is None else Score(float(self.answer(prompt, text) == want), text)


class HelloCommands(CommandPlugin):
    name = "hello"

    def register(self, app):
        @app.command("hello")
        def hello(name: str = "world") -> None:
            """Say hello (a plugin's command)."""
            print(f"hello {name}")


class NumberPrompts(PromptSource):
    source: Literal["numbers"] = "numbers"
    count: int = Field(3, ge=1)

    def _read(self, base_dir):
        return [Prompt(f"n{i}", (f"count to {i}",)) for i in range(self.count)]
'''


@pytest.fixture
def hooked(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = tmp_path / "site"
    fake_distribution(root, "specbench-hooked", ENTRY_POINTS, {"hooked": MODULE})
    monkeypatch.syspath_prepend(str(root))
    task_registry.cache_clear()
    source_plugins.cache_clear()


@pytest.mark.usefixtures("hooked")
def test_a_task_plugin_scores_prompts_that_name_it() -> None:
    assert {"gsm8k", "humaneval", "last-word"} <= set(tasks())
    prompt = Prompt("p", ("say a word",), reference={"answer": "blue"}, task="last-word")
    task = task_for(prompt)
    assert task is not None and task.score(prompt, "the sky is blue") is not None
    assert InlinePromptSet(prompts=["x"], task="last-word").check(Path()) == []


@pytest.mark.usefixtures("hooked")
def test_a_broken_task_plugin_is_named_where_a_prompt_set_uses_it() -> None:
    (issue,) = InlinePromptSet(prompts=["x"], task="broken-task").check(Path())
    assert issue[0] == "task" and "task 'broken-task' failed to load" in issue[1]


@pytest.mark.usefixtures("hooked")
def test_a_command_plugin_adds_a_command() -> None:
    from specbench.cli.main import make_app

    result = CliRunner().invoke(make_app(), ["hello", "--name", "plugin"])
    assert result.exit_code == 0, result.output
    assert "hello plugin" in result.output


@pytest.mark.usefixtures("hooked")
def test_a_prompt_source_plugin_is_a_preset_source(tmp_path: Path) -> None:
    from specbench.errors import SpecbenchError
    from specbench.plugins import discover_methods
    from specbench.presets.schema import load_preset

    preset = tmp_path / "numbers.toml"
    body = '[models.target]\nbackend = "toy"\n[[methods]]\nname = "baseline"\n[prompts]\n'
    preset.write_text(body + 'source = "numbers"\ncount = 2\n')
    resolved = load_preset(str(preset), discover_methods())
    prompts = resolved.preset.prompts.load(tmp_path)
    assert [p.id for p in prompts] == ["n0", "n1"]
    preset.write_text(body + 'source = "numbers"\ncount = 0\n')
    with pytest.raises(SpecbenchError, match=r"prompts\.count"):
        load_preset(str(preset), discover_methods())
    preset.write_text(body + 'source = "broken-source"\n')
    with pytest.raises(SpecbenchError, match=r"prompt source 'broken-source' failed to load"):
        load_preset(str(preset), discover_methods())
    # An unknown source is named with every source there is, the plugins' included.
    preset.write_text(body + 'source = "nmubers"\n')
    with pytest.raises(SpecbenchError, match=r"unknown prompt source 'nmubers'.*jsonl.*numbers"):
        load_preset(str(preset), discover_methods())
