"""Plugins add tasks (how outputs are scored) and CLI commands through entry points, like
methods and backends: one door, and a broken plugin is named, never silently dropped."""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers import fake_distribution
from typer.testing import CliRunner

from specbench.prompts.prompt import Prompt
from specbench.prompts.sources import InlinePromptSet
from specbench.prompts.tasks import task_for, tasks

ENTRY_POINTS = """
[specbench.tasks]
last-word = hooked:LastWordTask
broken-task = hooked:Missing

[specbench.commands]
hello = hooked:HelloCommands
"""

MODULE = '''
from specbench.api import CommandPlugin, Score, Task


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
'''


@pytest.fixture
def hooked(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = tmp_path / "site"
    fake_distribution(root, "specbench-hooked", ENTRY_POINTS, {"hooked": MODULE})
    monkeypatch.syspath_prepend(str(root))
    tasks.cache_clear()


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
