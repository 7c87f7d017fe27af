"""Tasks: what a prompt's answer is, and how good an output is.

A task turns a model's text into a comparable *answer* (AutoJudge's label mining asks
whether an answer changed) and a *score* against the prompt's reference (the quality that a
lossy method may cost): GSM8K compares the final number, HumanEval runs the unit tests.

HumanEval code runs in a separate Python process (isolated mode, a temporary working
directory, a CPU-time, memory and wall-clock limit, sockets disabled), never in specbench's
own process.
"""

from __future__ import annotations

import functools
import os
import re
import subprocess
import sys
import tempfile
from abc import ABC, abstractmethod
from collections.abc import Hashable
from dataclasses import dataclass
from typing import ClassVar

from specbench.entry_points import BrokenEntry, load_entry_points
from specbench.prompts.prompt import Prompt, normalize_number


@dataclass(frozen=True)
class Score:
    """How an output fared: ``value`` 1.0 when correct, and what its answer was."""

    value: float
    answer: str


class Task(ABC):
    """How to read an answer out of an output and score it. Tasks are plugins (entry-point
    group ``specbench.tasks``, the built-in ``gsm8k`` and ``humaneval`` included); a prompt
    set names its task (``task = "gsm8k"``)."""

    name: ClassVar[str] = ""

    @abstractmethod
    def answer(self, prompt: Prompt, text: str) -> Hashable | None:
        """The output's answer (``None`` when it has none)."""

    @abstractmethod
    def score(self, prompt: Prompt, text: str) -> Score | None:
        """The output against the prompt's reference; ``None`` when there is no reference."""


def extract_number_answer(text: str) -> str | None:
    """The final numeric answer of a worked solution.

    In order: the number after ``####``, after "answer is", inside ``\\boxed{}``, else the
    last number in the text.
    """
    for pattern in (
        r"####\s*([-$\d.,]+)",
        r"answer is[:\s]*\$?\s*([-\d.,]+)",
        r"\\boxed\{([-$\d.,]+)\}",
    ):
        matches = re.findall(pattern, text, flags=re.IGNORECASE)
        if matches:
            value = normalize_number(matches[-1])
            if value is not None:
                return value
    numbers = re.findall(r"-?\d[\d,]*(?:\.\d+)?", text)
    return normalize_number(numbers[-1]) if numbers else None


class Gsm8kTask(Task):
    """GSM8K: the final number, compared with the reference's ``#### N``."""

    name = "gsm8k"

    def answer(self, prompt: Prompt, text: str) -> Hashable | None:
        return extract_number_answer(text)

    def score(self, prompt: Prompt, text: str) -> Score | None:
        reference = prompt.reference.get("answer")
        if reference is None:
            return None
        answer = extract_number_answer(text)
        return Score(float(answer == reference), str(answer))


@dataclass(frozen=True)
class ExecutionResult:
    passed: bool
    reason: str


class HumanEvalTask(Task):
    """HumanEval: pass@1 of the completion under the problem's unit tests."""

    name = "humaneval"

    def __init__(self, timeout_s: float = 10.0) -> None:
        self.timeout_s = timeout_s

    def answer(self, prompt: Prompt, text: str) -> Hashable | None:
        return self.run(prompt, text).passed

    def score(self, prompt: Prompt, text: str) -> Score | None:
        if "test" not in prompt.reference:
            return None
        result = self.run(prompt, text)
        return Score(float(result.passed), result.reason)

    def run(self, prompt: Prompt, text: str) -> ExecutionResult:
        reference = prompt.reference
        program = (
            f"{reference['prompt']}{completion_body(text)}\n\n{reference['test']}\n\n"
            f"check({reference['entry_point']})\n"
        )
        return run_isolated(program, self.timeout_s)


def completion_body(text: str) -> str:
    """The code of a completion: the first fenced block if there is one, else the text."""
    fenced = re.search(r"```(?:python)?\n(.*?)(?:```|$)", text, flags=re.DOTALL)
    return fenced.group(1) if fenced else text


_SANDBOX_PRELUDE = """
import socket, resource, sys
def _no_network(*args, **kwargs):
    raise OSError("network access is disabled in the HumanEval sandbox")
socket.socket = _no_network
socket.create_connection = _no_network
resource.setrlimit(resource.RLIMIT_AS, ({memory}, {memory}))
resource.setrlimit(resource.RLIMIT_CPU, ({cpu}, {cpu}))
"""


def run_isolated(program: str, timeout_s: float, memory_bytes: int = 2 << 30) -> ExecutionResult:
    """Run ``program`` in a fresh, isolated Python process; passed = exit status 0."""
    prelude = _SANDBOX_PRELUDE.format(memory=memory_bytes, cpu=max(1, int(timeout_s) + 1))
    with tempfile.TemporaryDirectory(prefix="specbench-exec-") as workdir:
        script = os.path.join(workdir, "program.py")
        with open(script, "w", encoding="utf-8") as handle:
            handle.write(prelude + "\n" + program)
        env = {"PATH": os.environ.get("PATH", ""), "PYTHONHASHSEED": "0"}
        try:
            result = subprocess.run(
                [sys.executable, "-I", "-S", script],
                cwd=workdir,
                env=env,
                capture_output=True,
                text=True,
                timeout=timeout_s,
                check=False,
            )
        except subprocess.TimeoutExpired:
            return ExecutionResult(False, f"timed out after {timeout_s:g} s")
    if result.returncode == 0:
        return ExecutionResult(True, "passed")
    lines = (result.stderr or result.stdout).strip().splitlines()
    return ExecutionResult(False, lines[-1] if lines else f"exit status {result.returncode}")


TASK_GROUP = "specbench.tasks"


@dataclass
class TaskRegistry:
    """Every task registered under ``specbench.tasks``: one instance of each by name, and
    the plugins that failed to load (a prompt set naming one is told why)."""

    tasks: dict[str, Task]
    broken: dict[str, BrokenEntry]


@functools.cache
def task_registry() -> TaskRegistry:
    """The registered tasks, loaded once (``cache_clear`` reads the entry points again)."""
    group = load_entry_points(TASK_GROUP, Task)
    return TaskRegistry({name: e.cls() for name, e in group.loaded.items()}, group.broken)


def tasks() -> dict[str, Task]:
    """Every registered task by name."""
    return task_registry().tasks


def unknown_task(name: str) -> str:
    """Why ``name`` is no task: a plugin that failed to load, or none by that name."""
    broken = task_registry().broken.get(name)
    if broken is not None:
        return f"task '{name}' failed to load: {broken.error}"
    return f"unknown task '{name}'"


def task_for(prompt: Prompt) -> Task | None:
    """The task that scores ``prompt``, if any."""
    return tasks().get(prompt.task) if prompt.task else None
