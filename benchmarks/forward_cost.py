"""Cost of one forward call by number of new tokens, through specbench's HF sessions.

Speculative decoding pays off when scoring k + 1 tokens costs about what scoring one does,
and when a draft step is cheap next to a target step (Leviathan et al.'s c). This prints
both for the given models and settings, median of several calls after a warm-up.

    python benchmarks/forward_cost.py --models qwen2.5-coder-1.5b,qwen2.5-coder-0.5b
"""

from __future__ import annotations

import argparse
import statistics
import time

from rich.console import Console
from rich.table import Table

from specbench.models.catalog import resolve_model_source
from specbench.models.hf import load_hf_model
from specbench.models.specs import HFModelSpec


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", required=True, help="Comma-separated catalogue names/folders.")
    parser.add_argument("--dtypes", default="float32,bfloat16")
    parser.add_argument("--tokens", default="1,2,5,9")
    parser.add_argument("--context", type=int, default=200, help="Tokens already cached.")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument(
        "--modes", default="default", help="default, batch-invariant, or both comma-separated."
    )
    args = parser.parse_args()
    counts = [int(n) for n in args.tokens.split(",")]

    table = Table(title=f"ms per forward call after {args.context} cached tokens (median)")
    table.add_column("model")
    table.add_column("dtype")
    table.add_column("mode")
    for n in counts:
        table.add_column(f"{n} token{'s' if n > 1 else ''}", justify="right")
    table.add_column(f"{counts[-1]}:1", justify="right")
    runs = [
        (name, dtype, mode)
        for name in args.models.split(",")
        for dtype in args.dtypes.split(",")
        for mode in args.modes.split(",")
    ]
    for name, dtype, mode in runs:
        spec = HFModelSpec(model=name, dtype=dtype, batch_invariant=mode == "batch-invariant")
        model = load_hf_model(spec, resolve_model_source(name), name)
        session = model.new_session()
        context = list(range(100, 100 + args.context))
        session.logits_from(context, len(context) - 1)
        row = []
        for n in counts:
            times = []
            for r in range(args.repeats + 1):
                tokens = context + [200 + r] * n
                start = time.perf_counter()
                session.logits_from(tokens, len(context) - 1)
                times.append(time.perf_counter() - start)
            row.append(1000 * statistics.median(times[1:]))
        table.add_row(name, dtype, mode, *(f"{t:.1f}" for t in row), f"{row[-1] / row[0]:.2f}")
        del model, session
    Console(width=140).print(table)


if __name__ == "__main__":
    main()
