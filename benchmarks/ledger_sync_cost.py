"""What the cost ledger costs: the same decoding with no ledger open and with one open.

On a CPU the ledger only reads the clock. On CUDA it synchronises the device at every phase
boundary (the split by phase needs it), which keeps the host from queueing work ahead: this
prints that price per token and per synchronisation, for plain and speculative decoding,
the two interleaved request by request.

    python benchmarks/ledger_sync_cost.py --device cuda --target llama-3.2-1b \\
        --draft tiny-llama-draft --tokens 128 --repeats 5
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Any

import torch
from rich.console import Console
from rich.table import Table

from specbench.decoding.sampling import SamplingParams
from specbench.decoding.types import GenerationRequest
from specbench.methods.baseline import BaselineMethod, BaselineParams
from specbench.methods.speculative import SpeculativeMethod, SpeculativeParams
from specbench.models.ledger import CostLedger, open_ledger
from specbench.models.loading import load_models
from specbench.models.specs import DummyModelSpec, ModelsSpec


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--target", default="llama-3.2-1b")
    parser.add_argument("--draft", default="tiny-llama-draft")
    parser.add_argument("--dtype", default="bfloat16")
    parser.add_argument("--engine", default="eager", choices=["eager", "static"])
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    common: dict[str, Any] = {"dtype": args.dtype, "device": args.device}
    models = load_models(
        ModelsSpec(
            target=DummyModelSpec(architecture=args.target, **common),
            draft=DummyModelSpec(architecture=args.draft, seed=1, **common),
        )
    )
    target = models.target
    methods = {
        "baseline": BaselineMethod(BaselineParams(engine=args.engine), models),
        # Random weights accept nothing: fix acceptance at a realistic 0.7 (timing only).
        "speculative k=4": SpeculativeMethod(
            SpeculativeParams(k=4, engine=args.engine, synthetic_acceptance=0.7), models
        ),
    }
    roles = {id(models.require_draft()): "draft", id(target): "target"}
    sync = target.synchronize if target.device.type == "cuda" else None
    prompt = list(range(10, 74))
    table = Table(title=f"The ledger's price: {args.target} on {args.device}, {args.engine}")
    for column in ("method", "closed ms/token", "open ms/token", "syncs/token", "us per sync"):
        table.add_column(column, justify="left" if column == "method" else "right")
    for name, method in methods.items():
        closed: list[float] = []
        opened: list[float] = []
        syncs = 0
        for repeat in range(args.repeats + 1):  # the first pair warms up (graphs, kernels)
            request = GenerationRequest(prompt, args.tokens, SamplingParams(), seed=repeat)
            for is_open in (False, True):
                ledger = CostLedger(roles, sync)  # type: ignore[arg-type]
                target.synchronize()
                start = time.perf_counter()
                if is_open:
                    with open_ledger(ledger):
                        result = method.generate(request)
                else:
                    result = method.generate(request)
                target.synchronize()
                per_token = (time.perf_counter() - start) * 1000 / max(len(result.tokens), 1)
                if repeat:
                    (opened if is_open else closed).append(per_token)
                    if is_open:
                        syncs += ledger.totals.syncs
        tokens = args.tokens * args.repeats
        closed_ms, open_ms = statistics.median(closed), statistics.median(opened)
        per_sync = (open_ms - closed_ms) * tokens / syncs * 1000 if syncs else 0.0
        table.add_row(
            name, f"{closed_ms:.2f}", f"{open_ms:.2f}", f"{syncs / tokens:.1f}", f"{per_sync:.0f}"
        )
    Console(width=120).print(table)


if __name__ == "__main__":
    main()
