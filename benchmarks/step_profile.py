"""Where one decoding step's time goes, operator by operator (torch.profiler), for one model.

The cost ledger splits a method's time into draft, target, verification and host; this looks
inside one forward: which kernels a one-token step spends its time in, for a choice of
attention, linear path and engine. It is how the CPU path of issue 25 was found (packed
linear layers, grouped attention without ``repeat_kv`` copies, the lean forward).

    python benchmarks/step_profile.py --model qwen2.5-coder-1.5b --attention invariant \\
        --prepack on --engine static --context 300 --steps 10

``--new-tokens 4`` profiles verification calls of 4 rows (k = 3) instead of one-token steps.
(specbench's own C++ operations are not torch operators: the profiler lists what is around
them; their time is the step's time minus the operators listed.)
"""

from __future__ import annotations

import argparse
import time

from torch.profiler import ProfilerActivity, profile

from specbench.models.catalog import resolve_model_source
from specbench.models.hf.loading import load_hf_model
from specbench.models.specs import HFModelSpec


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="qwen2.5-coder-1.5b")
    parser.add_argument("--dtype", default="bfloat16")
    parser.add_argument(
        "--attention",
        default="invariant",
        choices=["invariant", "eager", "sdpa"],
        help="invariant: batch_invariant (grouped row-stable attention); eager/sdpa: "
        "transformers' own.",
    )
    parser.add_argument("--prepack", default="on", choices=["on", "off"])
    parser.add_argument("--engine", default="eager", choices=["eager", "static"])
    parser.add_argument("--context", type=int, default=300)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument(
        "--new-tokens", type=int, default=1, help="Rows per call (k + 1 for a verification)."
    )
    parser.add_argument("--rows", type=int, default=20, help="Operators listed.")
    args = parser.parse_args()
    invariant = args.attention == "invariant"
    spec = HFModelSpec(
        model=args.model,
        dtype=args.dtype,
        batch_invariant=invariant,
        attn_implementation=None if invariant else args.attention,
        prepack=args.prepack == "on",
    )
    model = load_hf_model(spec, resolve_model_source(args.model), args.model)
    n = args.new_tokens
    tokens = list(range(100, 100 + args.context + (args.steps + 3) * n))
    if args.engine == "static":
        session = model.new_static_session(len(tokens), max_len=4096)
    else:
        session = model.new_session()
    session.logits_from(tokens[: args.context], args.context - 1)

    def call(i: int) -> None:  # n new tokens after the first i, logits for each of them
        session.logits_from(tokens[: i + n], i)

    for i in range(3):  # untimed: first calls of a shape set kernels up
        call(args.context + i * n)
    start = args.context + 3 * n
    plain = time.perf_counter()
    for i in range(start, start + args.steps * n, n):
        call(i)
    plain_ms = (time.perf_counter() - plain) * 1000 / args.steps
    session.logits_from(tokens[:start], start - 1)  # back to the same context
    with profile(activities=[ProfilerActivity.CPU]) as profiled:
        for i in range(start, start + args.steps * n, n):
            call(i)
    print(
        f"{args.model} {args.dtype}, attention {args.attention}, prepack {args.prepack}, "
        f"engine {args.engine}, {args.context} cached tokens: {plain_ms:.1f} ms per call of "
        f"{n} rows "
        f"unprofiled; operators over {args.steps} steps:"
    )
    print(profiled.key_averages().table(sort_by="self_cpu_time_total", row_limit=args.rows))


if __name__ == "__main__":
    main()
