"""Decoding speed against the hardware's limit and against Hugging Face, in one table.

Measures, in one run on one device:

* memory copy bandwidth, and the target's roofline: its weight bytes over that bandwidth;
* specbench's baseline (eager and static engine) against ``model.generate``;
* specbench's speculative decoding (eager and static) against HF assisted generation on the
  same pair, k and prompts, with measured acceptance;
* the forward costs of a draft step, a target step and a (k+1)-token verification, and the
  speedup Leviathan et al. predict from them beside the measured one;
* synthetic-acceptance runs (dummy weights accept almost nothing on their own): speedup
  against acceptance at real sizes, marked synthetic.

    python benchmarks/gpu.py                                   # CPU: tiny shapes, ~1 min
    python benchmarks/gpu.py --target llama-3.1-8b --draft llama-3.2-1b --device cuda

Every number is a median over prompts of milliseconds per generated token.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from rich.table import Table

from specbench.decoding.sampling import SamplingParams
from specbench.decoding.types import GenerationRequest
from specbench.models.hf.library import quiet_transformers
from specbench.models.loading import load_models
from specbench.models.specs import DummyModelSpec, ModelsSpec
from specbench.plugins import DecodingMethod, MethodModels, discover_methods
from specbench.report.theory import predicted_speedup

PROMPTS = [
    "Explain how speculative decoding speeds up large language model inference.",
    "Write a Python function that returns the n-th Fibonacci number.",
    "List three differences between latency and throughput.",
    "Summarize the plot of a detective novel in two sentences.",
]


@dataclass
class Row:
    name: str
    ms_per_token: float | None = None
    note: str = ""
    acceptance: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def copy_bandwidth(device: torch.device, megabytes: int) -> float:
    """Bytes read plus written per second by a device-to-device copy (median of 10)."""
    n = megabytes * (1 << 20) // 4
    src = torch.empty(n, dtype=torch.float32, device=device).uniform_()
    dst = torch.empty_like(src)
    times = []
    for _ in range(12):
        synchronize(device)
        start = time.perf_counter()
        dst.copy_(src)
        synchronize(device)
        times.append(time.perf_counter() - start)
    return 2 * src.numel() * 4 / statistics.median(times[2:])


def time_per_token(
    run: Callable[[list[int]], int], prompts: list[list[int]], device: torch.device
) -> float:
    """Median over prompts of seconds per generated token; ``run`` returns the token count."""
    run(prompts[0])  # warm-up (and graph capture)
    samples = []
    for prompt in prompts:
        synchronize(device)
        start = time.perf_counter()
        produced = run(prompt)
        synchronize(device)
        samples.append((time.perf_counter() - start) / max(produced, 1))
    return statistics.median(samples)


def make(name: str, models: MethodModels, **params: Any) -> DecodingMethod:
    info = discover_methods().get(name)
    return info.cls(info.cls.Params(**params), models)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--target", default="tiny-llama")
    parser.add_argument("--draft", default="tiny-llama-draft")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", default="bfloat16" if torch.cuda.is_available() else "float32")
    parser.add_argument("--layers", type=int, default=None, help="Override the target's depth.")
    parser.add_argument("--k", type=int, default=4)
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--prompts", type=int, default=3)
    parser.add_argument("--synthetic", default="0.6,0.8", help="Synthetic acceptance values.")
    parser.add_argument("--copy-mb", type=int, default=None)
    parser.add_argument("--skip-hf", action="store_true", help="Skip the HF generate rows.")
    parser.add_argument(
        "--compile",
        action=argparse.BooleanOptionalAction,
        default=torch.cuda.is_available(),
        help="Also time static steps compiled with torch.compile (default on CUDA).",
    )
    parser.add_argument("--json", type=Path, default=None, help="Also write the rows as JSON.")
    args = parser.parse_args()

    device = torch.device(args.device)
    overrides = {"num_hidden_layers": args.layers} if args.layers else {}
    target_spec = DummyModelSpec(
        architecture=args.target, dtype=args.dtype, device=args.device, overrides=overrides
    )
    draft_spec = DummyModelSpec(
        architecture=args.draft, dtype=args.dtype, device=args.device, seed=1
    )
    models = load_models(ModelsSpec(target=target_spec, draft=draft_spec))
    assert models.draft is not None
    tokenizer = models.target.tokenizer
    prompts = [tokenizer.encode(p) for p in (PROMPTS * 4)[: args.prompts]]
    n = args.new_tokens
    max_len = max(len(p) for p in prompts) + n + args.k + 8

    seeds = {tuple(p): i for i, p in enumerate(prompts)}  # a seed per prompt, same for all

    def ours(method: DecodingMethod) -> Callable[[list[int]], int]:
        def run(prompt: list[int]) -> int:
            request = GenerationRequest(prompt, n, SamplingParams(), seed=seeds[tuple(prompt)])
            return len(method.generate(request).tokens)

        return run

    rows: list[Row] = []
    bandwidth = copy_bandwidth(device, args.copy_mb or (1024 if device.type == "cuda" else 256))
    weight_bytes = models.target.describe()["bytes"]
    roofline = weight_bytes / bandwidth
    rows.append(Row("memory copy bandwidth", note=f"{bandwidth / 1e9:.1f} GB/s (read + write)"))
    rows.append(
        Row("target roofline", roofline * 1e3, note=f"{weight_bytes / 1e9:.2f} GB of weights")
    )

    static = {"engine": "static", "static_max_len": max_len}
    fastest = {**static, "compile": args.compile}  # the static engine's best settings
    baseline_eager = time_per_token(ours(make("baseline", models)), prompts, device)
    rows.append(Row("specbench baseline, eager", baseline_eager * 1e3))
    variants = [("static", static)] + ([("static + compile", fastest)] if args.compile else [])
    for label, params in variants:
        baseline_static = time_per_token(ours(make("baseline", models, **params)), prompts, device)
        rows.append(
            Row(
                f"specbench baseline, {label}",
                baseline_static * 1e3,
                note=f"{100 * roofline / baseline_static:.0f}% of roofline",
            )
        )
    hf_model = models.target.model  # type: ignore[attr-defined]
    draft_model = models.draft.model  # type: ignore[attr-defined]

    def hf_generate(assistant: Any = None) -> Callable[[list[int]], int]:
        def run(prompt: list[int]) -> int:
            ids = torch.tensor([prompt], device=device)
            kwargs: dict[str, Any] = {}
            if assistant is not None:
                assistant.generation_config.num_assistant_tokens = args.k
                assistant.generation_config.num_assistant_tokens_schedule = "constant"
                assistant.generation_config.assistant_confidence_threshold = 0.0
                kwargs["assistant_model"] = assistant
            with torch.no_grad(), quiet_transformers():
                out = hf_model.generate(
                    ids,
                    max_new_tokens=n,
                    min_new_tokens=n,
                    do_sample=False,
                    pad_token_id=0,
                    **kwargs,
                )
            return int(out.shape[1] - ids.shape[1])

        return run

    hf_base = None
    if not args.skip_hf:
        hf_base = time_per_token(hf_generate(), prompts, device)
        rows.append(
            Row(
                "HF generate",
                hf_base * 1e3,
                note=f"specbench static is {hf_base / baseline_static:.2f}x faster",
            )
        )

    # Forward costs in the static engine (graphs on CUDA): what Leviathan's c is made of.
    costs = {}
    for label, model, m in (
        ("target step (1 token)", models.target, 1),
        (f"target verify ({args.k + 1} tokens)", models.target, args.k + 1),
        ("draft step (1 token)", models.draft, 1),
    ):
        session = model.new_static_session(
            max_len, max_len=max_len, graph_lengths=(m,), compile=args.compile
        )
        decoder = session.decoder  # type: ignore[attr-defined]
        tokens = torch.tensor(prompts[0][:m] * m, device=model.device)[:m]
        times = []
        for _ in range(12):
            decoder.reset()
            decoder.forward(torch.tensor(prompts[0], device=model.device))
            synchronize(device)
            start = time.perf_counter()
            decoder.forward(tokens)
            synchronize(device)
            times.append(time.perf_counter() - start)
        session.close()
        costs[label] = statistics.median(times[2:])
        rows.append(Row(f"forward: {label}", costs[label] * 1e3))
    target_step = costs["target step (1 token)"]
    c = costs["draft step (1 token)"] / target_step
    verify = costs[f"target verify ({args.k + 1} tokens)"] / target_step
    rows.append(
        Row("cost ratio c = draft / target step", note=f"c = {c:.3f}, verify = {verify:.2f} steps")
    )

    static_name = "static + compile" if args.compile else "static"

    def speculative_rows(label: str, acceptance: float | None) -> None:
        params: dict[str, Any] = {"k": args.k}
        engines: list[tuple[str, dict[str, Any]]] = [(static_name, fastest)]
        if acceptance is None:
            engines.insert(0, ("eager", {}))
        else:  # synthetic rows: the fast engine only, to keep the run short
            params["synthetic_acceptance"] = acceptance
        for engine_name, extra in engines:
            method = make("speculative", models, **params, **extra)
            stats: list[tuple[int, int]] = []

            def run(
                prompt: list[int],
                method: DecodingMethod = method,
                stats: list[tuple[int, int]] = stats,
            ) -> int:
                request = GenerationRequest(prompt, n, SamplingParams(), seed=seeds[tuple(prompt)])
                result = method.generate(request)
                stats.append((result.stats.accepted, sum(result.stats.position_verified)))
                return len(result.tokens)

            seconds = time_per_token(run, prompts, device)
            accepted = sum(a for a, _ in stats[1:])
            verified = sum(v for _, v in stats[1:])
            alpha = accepted / verified if verified else 0.0
            base = baseline_eager if engine_name == "eager" else baseline_static
            predicted = (
                predicted_speedup(alpha, args.k, c) * (args.k * c + 1) / (args.k * c + verify)
            )
            rows.append(
                Row(
                    f"specbench speculative k={args.k}, {engine_name}{label}",
                    seconds * 1e3,
                    note=(
                        f"speedup {base / seconds:.2f}x (predicted {predicted:.2f}x, "
                        f"ratio {base / seconds / predicted:.2f})"
                    ),
                    acceptance=alpha,
                )
            )

    speculative_rows("", None)
    if not args.skip_hf and hf_base is not None:
        hf_spec = time_per_token(hf_generate(draft_model), prompts, device)
        rows.append(
            Row(
                f"HF assisted generation k={args.k}",
                hf_spec * 1e3,
                note=f"speedup over HF generate {hf_base / hf_spec:.2f}x",
            )
        )
    for value in [float(v) for v in args.synthetic.split(",") if v]:
        speculative_rows(f", synthetic acceptance {value:g}", value)

    title = (
        f"{args.target} / {args.draft} on {device.type} ({args.dtype}), {n} new tokens, "
        f"{args.prompts} prompts, k={args.k}, median ms per token"
    )
    table = Table(title=title)
    for column in ("measurement", "ms/token", "acceptance", "notes"):
        table.add_column(column, justify="left" if column in ("measurement", "notes") else "right")
    for row in rows:
        table.add_row(
            row.name,
            "-" if row.ms_per_token is None else f"{row.ms_per_token:.2f}",
            "-" if row.acceptance is None else f"{row.acceptance:.3f}",
            row.note,
        )
    Console(width=160).print(table)
    if args.json:
        args.json.write_text(json.dumps([row.__dict__ for row in rows], indent=2))


if __name__ == "__main__":
    main()
