"""Measured against predicted speedup on context-free toy pairs, through the real runner.

Order-0 toy models accept every draft token with the same probability alpha, the assumption
of Leviathan et al.'s formula, and cost a simulated, fixed time per forward call. If
specbench's timing and accounting are right, measured tokens/step and speedup match theory
with the measured alpha and cost ratio c. Prints one table.

    python benchmarks/toy.py            # or: nox -s bench-toy
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from specbench.plugins import discover_methods
from specbench.presets.schema import validate_preset
from specbench.records import SampleRecord, read_records
from specbench.report.summary import summarize
from specbench.report.theory import expected_tokens_per_step, predicted_speedup
from specbench.run.runner import run_preset

TARGET_MS = 4.0
DRAFT_MS = 0.4


def _preset(distance: float, ks: list[int], prompts: int, tokens: int) -> dict[str, Any]:
    toy = {"backend": "toy", "order": 0, "seed": 3, "sharpness": 1.0, "vocab_size": 32}
    methods: list[dict[str, Any]] = [{"name": "baseline"}]
    methods += [{"name": "speculative", "label": f"k={k}", "params": {"k": k}} for k in ks]
    # The draft alone, decoding as a baseline, measures the cost of one draft step.
    return {
        "name": f"toy-theory-d{distance}",
        "models": {
            "target": {**toy, "forward_ms": TARGET_MS},
            "draft": {**toy, "distance": distance, "forward_ms": DRAFT_MS},
        },
        "methods": methods,
        "prompts": {"source": "inline", "prompts": [f"prompt {i}" for i in range(prompts)]},
        "sampling": {"temperature": 1.0, "max_new_tokens": tokens},
        "runs": {"count": 1, "warmup": 1},
    }


def _draft_step_ms(distance: float, tokens: int) -> float:
    raw = _preset(distance, [], 2, tokens)
    raw["models"] = {"target": raw["models"]["draft"]}
    samples = _run(raw)
    return 1000 * sum(s.wall_s for s in samples) / sum(s.new_tokens for s in samples)


def _run(raw: dict[str, Any]) -> list[SampleRecord]:
    resolved = validate_preset(raw, "benchmarks/toy.py", discover_methods(), Path.cwd())
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "out.jsonl"
        run_preset(resolved, output=out)
        return [r for r in read_records(out) if isinstance(r, SampleRecord)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--distances", default="0.3,0.8,1.5")
    parser.add_argument("--ks", default="2,4,8")
    parser.add_argument("--prompts", type=int, default=6)
    parser.add_argument("--tokens", type=int, default=128)
    args = parser.parse_args()
    ks = [int(k) for k in args.ks.split(",")]

    table = Table(title="Toy pairs (order 0): measured vs Leviathan et al. prediction")
    for column in (
        "distance",
        "k",
        "alpha",
        "c",
        "tokens/step",
        "theory",
        "speedup",
        "theory",
        "ratio",
    ):
        table.add_column(column, justify="right")
    for distance in (float(d) for d in args.distances.split(",")):
        samples = _run(_preset(distance, ks, args.prompts, args.tokens))
        summaries = {s.method: s for s in summarize(samples, "baseline", "bench")}
        target_ms = 1000 / summaries["baseline"].tokens_per_sec_median
        c = _draft_step_ms(distance, args.tokens) / target_ms
        for k in ks:
            s = summaries[f"k={k}"]
            alpha = s.acceptance_rate or 0.0
            predicted = predicted_speedup(alpha, k, c)
            table.add_row(
                f"{distance:.1f}",
                str(k),
                f"{alpha:.3f}",
                f"{c:.3f}",
                f"{s.avg_tokens_per_step:.2f}",
                f"{expected_tokens_per_step(alpha, k):.2f}",
                f"{s.speedup or 0:.2f}x",
                f"{predicted:.2f}x",
                f"{(s.speedup or 0) / predicted:.2f}",
            )
    Console(width=140).print(table)


if __name__ == "__main__":
    main()
