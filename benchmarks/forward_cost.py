"""Cost of one forward call by number of new tokens, through specbench's HF sessions.

Speculative decoding pays off when scoring k + 1 tokens costs about what scoring one does,
and when a draft step is cheap next to a target step (Leviathan et al.'s c). This prints
both for the given models and settings, median of several calls after a warm-up, with the
engines' calls interleaved.

    python benchmarks/forward_cost.py --models qwen2.5-coder-1.5b,qwen2.5-coder-0.5b \
        --dtypes bfloat16 --prepack on,off --engines eager,static --tokens 1,4,5 --roofline

``--roofline`` also times, interleaved with the steps, one row through a single bf16 weight of
as many bytes as a step streams (every parameter but an untied input embedding), on
specbench's kernel: the time this machine needs to stream the model's weights at that minute.
"% of roofline" is its time over a 1-token step's, paired round by round (the stream timed
right after that round's steps), the median over rounds: it holds under the bandwidth drift
of a shared machine, where a bandwidth measured once at the start does not.

``--prepack specbench-torch-glue`` loads the model on specbench's linear kernel but keeps
torch's layer operations around it (the fused decoder-layer operations left out): interleaved
with ``specbench``, it prices the fused operations on this CPU. ``--prepack
specbench-few-rows`` packs in the kernel's layout for calls of one or two rows (the spec's
``linear_layout = "few-rows"``, a draft's default; ``specbench`` is a target's).
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import time
from collections.abc import Callable, Iterator

import torch
from rich.console import Console
from rich.table import Table

from specbench.models.catalog import resolve_model_source
from specbench.models.hf.loading import load_hf_model
from specbench.models.specs import HFModelSpec


def _weight_stream(model: torch.nn.Module) -> Callable[[], object]:
    """One row through one bf16 weight of as many bytes as a step of ``model`` streams."""
    from specbench.models import bf16_kernels

    if bf16_kernels.unavailable_reason() is not None:
        raise SystemExit(
            f"--roofline needs specbench's bf16 kernel: {bf16_kernels.unavailable_reason()}"
        )
    parameters = {id(p): p for p in model.parameters()}
    embedding = model.get_input_embeddings().weight
    output = model.get_output_embeddings()
    if output is None or output.weight is not embedding:
        parameters.pop(id(embedding), None)  # a step reads one row of it
    size = sum(p.numel() * p.element_size() for p in parameters.values())
    columns = 4096
    rows = size // (2 * columns) // 192 * 192  # whole blocks on either path
    # In the layout of the kernel's path in this process (they differ by path).
    packed = bf16_kernels.pack(torch.empty(rows, columns, dtype=torch.bfloat16).normal_())
    x = torch.randn(1, columns).to(torch.bfloat16)
    return lambda: bf16_kernels.linear(x, packed, rows, None)


@contextlib.contextmanager
def _torch_glue() -> Iterator[None]:
    """Models loaded inside keep torch's layer operations (no fused decoder layers)."""
    from specbench.models.hf import fused_layers

    saved = fused_layers.fuse_decoder_layers
    fused_layers.fuse_decoder_layers = lambda model: 0
    try:
        yield
    finally:
        fused_layers.fuse_decoder_layers = saved


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
        "specbench-torch-glue (specbench's linear kernel, torch's layer operations), "
        "specbench-few-rows (its layout for one- or two-row calls), off "
        "(transformers' layers), or several comma-separated (timed interleaved).",
    )
    parser.add_argument(
        "--engines", default="eager", help="eager (the session), static (lean on a CPU), or both."
    )
    parser.add_argument(
        "--roofline", action="store_true", help="Time a same-bytes weight stream interleaved."
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
    if args.roofline:
        table.add_column("% of roofline (1 token)", justify="right")
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
            glue = prepack == "specbench-torch-glue"
            few_rows = prepack == "specbench-few-rows"
            kernel = (
                "specbench"
                if glue or few_rows
                else prepack
                if prepack in ("specbench", "onednn")
                else "auto"
            )
            spec = HFModelSpec(
                model=name,
                dtype=dtype,
                batch_invariant=mode == "batch-invariant",
                prepack=prepack != "off",
                linear_kernel=kernel,
                linear_layout="few-rows" if few_rows else "auto",
            )
            with _torch_glue() if glue else contextlib.nullcontext():
                model = load_hf_model(spec, resolve_model_source(name), name)
            for engine in engines:
                sessions[(prepack, engine)] = (
                    model.new_session()
                    if engine == "eager"
                    else model.new_static_session(len(context) + 64, max_len=4096)
                )
        for session in sessions.values():
            session.logits_from(context, len(context) - 1)
        stream = _weight_stream(model.model) if args.roofline else None
        streamed: list[float] = []
        # The calls interleaved: the machine's drift hits every packing and engine alike.
        times: dict[tuple[str, str, int], list[float]] = {
            (*key, n): [] for key in sessions for n in counts
        }
        for r in range(args.repeats + 1):
            for n in counts:
                for (prepack, engine), session in sessions.items():
                    tokens = context + [200 + r] * n
                    start = time.perf_counter()
                    # Logits from the first new token: a call of exactly n rows (from the
                    # last context token it would re-feed that token, n + 1 rows).
                    session.logits_from(tokens, len(context))
                    times[(prepack, engine, n)].append(time.perf_counter() - start)
                if stream is not None:
                    start = time.perf_counter()
                    stream()
                    streamed.append(time.perf_counter() - start)
        roofline = 1000 * statistics.median(streamed[1:]) if streamed else None
        # The stream right after each round's first-count calls (index r * len(counts)).
        adjacent = streamed[:: len(counts)]
        for prepack, engine in sessions:
            row = [1000 * statistics.median(times[(prepack, engine, n)][1:]) for n in counts]
            cells = [f"{t:.1f}" for t in row]
            # Paired round by round (the stream over the step of the same round), then the
            # median: a drift between rounds cancels in each ratio.
            steps = times[(prepack, engine, counts[0])]
            extra = []
            if roofline is not None:
                ratios = [s / t for s, t in zip(adjacent[1:], steps[1:], strict=True)]
                extra = [f"{100 * statistics.median(ratios):.0f}%"]
            table.add_row(
                name, dtype, mode, prepack, engine, *cells, f"{row[-1] / row[0]:.2f}", *extra
            )
        if roofline is not None:
            # Its time under the first count's column, "-" under the rest and the ratio.
            blanks = ["-"] * len(counts)
            table.add_row(name, dtype, mode, "-", "weight stream", f"{roofline:.1f}", *blanks)
        del model, sessions, stream
    Console(width=140).print(table)


if __name__ == "__main__":
    main()
