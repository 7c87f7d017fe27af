"""Which CPU kernel path a linear layer takes, how fast it streams weights, and whether a
row's result depends on how many rows share the call (batch invariance).

A decoding step multiplies one row (or k + 1 rows in a verification) by every weight matrix
of the model: at batch one it is bound by how fast the kernel reads the weights. Torch picks
a different library path by dtype, CPU and row count, and they differ in speed and rounding.
This script times each path on a stack of Qwen2.5-Coder-1.5B- or 0.5B-shaped layers (random
weights, larger than the caches) at 1..16 rows and checks, bit for bit, that row 0 of an m-row call
equals the same row computed alone (m = 1), and with 2 rows (the batch-invariant reference).

    python benchmarks/linear_kernels.py [--shapes 1.5b|0.5b] [--layers 8] [--repeats 5]

Paths: ``linear`` (``F.linear``, what transformers calls), ``linear 2-row`` (a single row run
as two, :class:`specbench.models.hf.numerics.RowStableLinear`), ``onednn packed`` (the weight
reordered once for oneDNN, ``torch.ops.mkldnn._linear_pointwise``: what inductor's CPU
freezing emits), ``onednn packed, 4-row floor`` (calls of fewer rows padded to 4: what
:class:`specbench.models.packed.PackedLinear` runs with ``linear_kernel = "onednn"``), and
``specbench bf16`` (:mod:`specbench.models.bf16_gemm`, the default where it runs).
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Callable

import torch
from rich.console import Console
from rich.table import Table

from specbench.hardware import cpu_flags
from specbench.models.packed import ROW_FLOOR

#: One decoder layer's weights ([out, in]) by model: Qwen2.5-Coder-1.5B (hidden 1536, MLP 8960,
#: 12 query and 2 key/value heads of 128) and 0.5B (hidden 896, MLP 4864, 14 and 2 heads of 64).
LAYER_SHAPES = {
    "1.5b": [(1536, 1536), (256, 1536), (256, 1536), (1536, 1536)]
    + [(8960, 1536), (8960, 1536), (1536, 8960)],
    "0.5b": [(896, 896), (128, 896), (128, 896), (896, 896)]
    + [(4864, 896), (4864, 896), (896, 4864)],
}

Path = Callable[[torch.Tensor], torch.Tensor]


def _paths(weight: torch.Tensor) -> dict[str, Path]:
    from specbench.models import bf16_kernels
    from specbench.models.packed import pack_weight, packing_available

    packed = pack_weight(weight, "onednn") if packing_available(weight) else None
    own = (
        pack_weight(weight, "specbench")
        if bf16_kernels.supports(weight) and bf16_kernels.unavailable_reason() is None
        else None
    )

    def doubled(x: torch.Tensor) -> torch.Tensor:
        if x.shape[0] == 1:
            return torch.nn.functional.linear(torch.cat([x, x]), weight)[:1]
        return torch.nn.functional.linear(x, weight)

    paths: dict[str, Path] = {
        "linear": lambda x: torch.nn.functional.linear(x, weight),
        "linear 2-row": doubled,
    }
    if packed is not None:
        paths["onednn packed"] = lambda x: torch.ops.mkldnn._linear_pointwise(
            x, packed.data, None, "none", [], ""
        )
        paths[f"onednn packed, {ROW_FLOOR}-row floor"] = lambda x: packed.linear(x, None)
    if own is not None:
        paths["specbench bf16"] = lambda x: own.linear(x, None)
    return paths


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32"])
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--rows", default="1,2,3,4,5,8,16")
    parser.add_argument("--shapes", default="1.5b", choices=sorted(LAYER_SHAPES))
    args = parser.parse_args()
    shapes = LAYER_SHAPES[args.shapes]
    dtype = getattr(torch, args.dtype)
    rows = [int(r) for r in args.rows.split(",")]
    torch.manual_seed(0)
    layers = [
        torch.randn(out, inp, dtype=dtype) * 0.02 for _ in range(args.layers) for out, inp in shapes
    ]
    size = sum(w.numel() * w.element_size() for w in layers)
    stacks = [_paths(w) for w in layers]
    names = list(stacks[0])
    console = Console(width=200)

    timing = Table(
        title=f"{size / 1e9:.2f} GB of {args.dtype} weights ({args.shapes} layer shapes), "
        "ms per pass (GB/s)"
    )
    timing.add_column("path")
    for m in rows:
        timing.add_column(f"{m} row" + ("s" if m > 1 else ""), justify="right")
    for name in names:
        cells = []
        for m in rows:
            xs = {inp: torch.randn(m, inp, dtype=dtype) for _, inp in shapes}
            best = float("inf")
            for _ in range(args.repeats + 1):  # the first pass warms up
                start = time.perf_counter()
                for weight, paths in zip(layers, stacks, strict=True):
                    paths[name](xs[weight.shape[1]])
                best = min(best, time.perf_counter() - start)
            cells.append(f"{best * 1e3:.1f} ({size / best / 1e9:.1f})")
        timing.add_row(name, *cells)
    console.print(timing)

    invariance = Table(title="Row 0 of an m-row call, bit for bit: = alone (m = 1) / = 2 rows")
    invariance.add_column("path")
    for m in rows:
        invariance.add_column(f"m={m}", justify="right")
    for name in names:
        cells = []
        for m in rows:
            alone = two = 0
            for weight, paths in zip(layers[: len(shapes)], stacks[: len(shapes)], strict=True):
                x = torch.randn(max(m, 2), weight.shape[1], dtype=dtype)
                reference_1 = paths[name](x[:1])[0]
                reference_2 = paths[name](x[:2])[0]
                row = paths[name](x[:m])[0]
                alone += bool(torch.equal(row, reference_1))
                two += bool(torch.equal(row, reference_2))
            cells.append(f"{alone}/{len(shapes)} / {two}/{len(shapes)}")
        invariance.add_row(name, *cells)
    console.print(invariance)
    flags = " ".join(cpu_flags()) or "unknown"
    console.print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, CPU capability "
        f"{torch.backends.cpu.get_cpu_capability()}, flags: {flags}; load average "
        f"{os.getloadavg()[0]:.2f}"
    )


if __name__ == "__main__":
    main()
