"""Cost of one forward call by number of new tokens, through specbench's HF sessions.

Speculative decoding pays off when scoring k + 1 tokens costs about what scoring one does,
and when a draft step is cheap next to a target step (Leviathan et al.'s c). This prints
both for the given models and settings, median of several calls after a warm-up, with the
engines' calls interleaved.

    python benchmarks/forward_cost.py --models qwen2.5-coder-1.5b,qwen2.5-coder-0.5b \
        --dtypes bfloat16 --prepack on,off --engines eager,static --tokens 1,4,5
"""

from __future__ import annotations

import argparse
import statistics
import time

from rich.console import Console
from rich.table import Table

from specbench.models.catalog import resolve_model_source
from specbench.models.hf.loading import load_hf_model
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
    parser.add_argument(
        "--prepack",
        default="on",
        help="on (packed linear layers, the default kernel), specbench, onednn (that kernel), "
        "off (transformers' layers), or several comma-separated (timed interleaved).",
    )
    parser.add_argument(
        "--engines", default="eager", help="eager (the session), static (lean on a CPU), or both."
    )
    args = parser.parse_args()
    counts = [int(n) for n in args.tokens.split(",")]

    table = Table(title=f"ms per forward call after {args.context} cached tokens (median)")
    table.add_column("model")
    table.add_column("dtype")
    table.add_column("mode")
    table.add_column("prepack")
    table.add_column("engine")
    for n in counts:
        table.add_column(f"{n} token{'s' if n > 1 else ''}", justify="right")
    table.add_column(f"{counts[-1]}:1", justify="right")
    runs = [
        (name, dtype, mode)
        for name in args.models.split(",")
        for dtype in args.dtypes.split(",")
        for mode in args.modes.split(",")
    ]
    engines = args.engines.split(",")
    context = list(range(100, 100 + args.context))
    for name, dtype, mode in runs:
        # Every packing of one model loaded at once, so their calls interleave below.
        sessions = {}
        for prepack in args.prepack.split(","):
            kernel = {"on": "auto", "off": "auto"}.get(prepack, prepack)
            spec = HFModelSpec(
                model=name,
                dtype=dtype,
                batch_invariant=mode == "batch-invariant",
                prepack=prepack != "off",
                linear_kernel=kernel,
            )
            model = load_hf_model(spec, resolve_model_source(name), name)
            for engine in engines:
                sessions[(prepack, engine)] = (
                    model.new_session()
                    if engine == "eager"
                    else model.new_static_session(len(context) + 64, max_len=4096)
                )
        for session in sessions.values():
            session.logits_from(context, len(context) - 1)
        # The calls interleaved: the machine's drift hits every packing and engine alike.
        times: dict[tuple[str, str, int], list[float]] = {
            (*key, n): [] for key in sessions for n in counts
        }
        for r in range(args.repeats + 1):
            for n in counts:
                for (prepack, engine), session in sessions.items():
                    tokens = context + [200 + r] * n
                    start = time.perf_counter()
                    session.logits_from(tokens, len(context) - 1)
                    times[(prepack, engine, n)].append(time.perf_counter() - start)
        for prepack, engine in sessions:
            row = [1000 * statistics.median(times[(prepack, engine, n)][1:]) for n in counts]
            cells = (f"{t:.1f}" for t in row)
            table.add_row(name, dtype, mode, prepack, engine, *cells, f"{row[-1] / row[0]:.2f}")
        del model, sessions
    Console(width=140).print(table)


if __name__ == "__main__":
    main()
