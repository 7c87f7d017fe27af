"""Answers and scores: GSM8K number extraction, HumanEval run isolated with a time limit."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from specbench.prompts.prompt import Prompt
from specbench.prompts.sources import BuiltinPromptSet
from specbench.prompts.tasks import Gsm8kTask, HumanEvalTask, extract_number_answer, run_isolated


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("3 + 4 = 7 so #### 7", "7"),
        ("... The answer is 1,250.", "1250"),
        ("The answer is: $18.00", "18"),
        ("so \\boxed{42}", "42"),
        ("first 3 then 5 then 12", "12"),
        ("no numbers here", None),
        ("It is -4.", "-4"),
    ],
)
def test_number_answers(text: str, expected: str | None) -> None:
    assert extract_number_answer(text) == expected


def test_gsm8k_score_against_reference() -> None:
    prompt = BuiltinPromptSet(source="gsm8k", limit=1).load(Path())[0]
    task = Gsm8kTask()
    right = task.score(prompt, "She sells 9 eggs at $2 each. The answer is 18.")
    wrong = task.score(prompt, "The answer is 17.")
    assert right is not None and right.value == 1.0 and right.answer == "18"
    assert wrong is not None and wrong.value == 0.0
    assert task.score(Prompt(id="x", turns=("q",)), "7") is None


@pytest.fixture(scope="module")
def add_problem() -> Prompt:
    return Prompt(
        id="t/0",
        turns=("def add(a, b):\n",),
        reference={
            "prompt": "def add(a, b):\n",
            "test": "def check(candidate):\n    assert candidate(2, 3) == 5\n",
            "entry_point": "add",
        },
        task="humaneval",
    )


def test_humaneval_pass_and_fail(add_problem: Prompt) -> None:
    task = HumanEvalTask(timeout_s=10)
    passed = task.score(add_problem, "    return a + b\n")
    assert passed is not None and passed.value == 1.0
    failed = task.score(add_problem, "```python\n    return a - b\n```")
    assert failed is not None and failed.value == 0.0 and "AssertionError" in failed.answer


def test_execution_times_out(add_problem: Prompt) -> None:
    result = HumanEvalTask(timeout_s=2).run(add_problem, "    while True:\n        pass\n")
    assert not result.passed and "timed out" in result.reason


def test_execution_has_no_network_and_leaves_the_parent_alone(tmp_path: Path) -> None:
    result = run_isolated(
        "import socket\nsocket.create_connection(('127.0.0.1', 9))\n", timeout_s=10
    )
    assert not result.passed and "network access is disabled" in result.reason
    marker = tmp_path / "marker"
    result = run_isolated(
        "import os\nopen('written.txt', 'w').write('x')\nos.environ['LEAK'] = '1'\nos._exit(0)\n",
        timeout_s=10,
    )
    assert result.passed
    assert "LEAK" not in os.environ and not Path("written.txt").exists() and not marker.exists()


def test_humaneval_reference_solutions_pass() -> None:
    import json

    from specbench.prompts.sources import DATA_DIR

    rows = [
        json.loads(line) for line in (DATA_DIR / "humaneval.jsonl").read_text().splitlines()[:3]
    ]
    prompts = BuiltinPromptSet(source="humaneval", limit=3).load(Path())
    task = HumanEvalTask()
    for prompt, row in zip(prompts, rows, strict=True):
        assert task.score(prompt, row["canonical_solution"]).value == 1.0
