"""specbench, transformers, vLLM and llama.cpp side by side: one run, one table.

Runs ``presets/qwen-coder-engines.toml`` (the Qwen2.5-Coder 1.5B target with its 0.5B draft,
greedy, the same MT-Bench prompts for every row) and prints, for every row: milliseconds
per token, tokens per target call, acceptance, the speedup over the row's own engine's
plain decoding and over specbench's baseline, ``= baseline`` within the engine, and the
memory-bandwidth roofline of this machine for the weights that engine reads per target
call (bf16 for specbench/transformers/vLLM, the Q4_K_M GGUF for llama.cpp).

    nox -s engines                        # makes vLLM's environment, builds llama-server
    python benchmarks/engines.py [--audit] [--preset P] [--output results.jsonl]

Needs the catalogue models (``specbench models fetch qwen2.5-coder-1.5b qwen2.5-coder-0.5b``),
the llama.cpp and vLLM plugins, and vLLM itself (see the plugins' READMEs). ``--audit``
also runs ``specbench audit`` on the preset's rows: greedy identity with the engine's own
plain decoding, with the target's top-2 margin where outputs part (near-tie or bug).
"""

from __future__ import annotations

import os

# vLLM logs every weight it loads to stdout; keep the table readable.
os.environ.setdefault("VLLM_LOGGING_LEVEL", "ERROR")

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from rich.table import Table

from specbench.audit.run import AuditOptions, audit_preset
from specbench.hardware import cpu_flags
from specbench.models.catalog import CATALOG
from specbench.plugins import discover_methods
from specbench.presets.schema import load_preset
from specbench.records import RunHeader, SummaryRecord, read_records
from specbench.report.plots import plot_costs
from specbench.report.results import load_results
from specbench.run.runner import run_preset

sys.path.insert(0, str(Path(__file__).parent))
from gpu import copy_bandwidth

ROOT = Path(__file__).resolve().parents[1]


def parameter_bytes(folder: Path, per_parameter: int = 2) -> int:
    """Bytes a decoding step streams from a safetensors folder at ``per_parameter`` bytes a
    parameter: every parameter but an input embedding table that is not also the output
    layer (a step reads one row of it)."""
    from safetensors import safe_open

    sizes: dict[str, int] = {}
    for path in sorted(folder.glob("*.safetensors")):
        with safe_open(str(path), "pt") as handle:
            for name in handle.keys():  # noqa: SIM118 - safe_open is not a mapping
                sizes[name] = _numel(handle.get_slice(name).get_shape())
    if any(name.endswith("lm_head.weight") for name in sizes):
        sizes = {n: v for n, v in sizes.items() if not n.endswith("embed_tokens.weight")}
    return per_parameter * sum(sizes.values())


def _numel(shape: list[int]) -> int:
    count = 1
    for size in shape:
        count *= size
    return count


def weight_bytes(engine: str, model: str, dtype: str) -> tuple[str, int]:
    """What a target call of ``engine`` reads: (format, bytes)."""
    entry = CATALOG[model]
    if engine == "llama.cpp":
        return "Q4_K_M", entry.gguf_path().stat().st_size
    if dtype == "float32":
        return "fp32", parameter_bytes(entry.hf_dir(), 4)
    return "bf16", parameter_bytes(entry.hf_dir(), 2)


def stream_bandwidth(megabytes: int = 1024) -> float | None:
    """Bytes per second read by specbench's bf16 kernel multiplying one row by one
    ``megabytes`` weight (median of 7 after 2 warm-ups): a read-only stream with its
    arithmetic hidden under the reads, the fastest this machine streams weights (``None``
    where the kernel cannot run). A copy moves as many bytes out as in and pays for writing
    them back, so its read + write rate understates what a read stream gets."""
    from specbench.models import bf16_kernels

    if bf16_kernels.unavailable_reason() is not None:
        return None
    columns = 32768
    rows = megabytes * (1 << 20) // (2 * columns)
    packed = bf16_kernels.pack(torch.randn(rows, columns).to(torch.bfloat16))
    x = torch.randn(1, columns).to(torch.bfloat16)
    times = []
    for _ in range(9):
        start = time.perf_counter()
        bf16_kernels.linear(x, packed, rows, None)
        times.append(time.perf_counter() - start)
    return packed.numel() * 2 / statistics.median(times[2:])


def _ratio_text(ratio: float | None, gap: str | None) -> str:
    if ratio is None:
        return "-"
    return f"{ratio:.2f}x" + (f" ({gap})" if gap else "")


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default=str(ROOT / "presets/qwen-coder-engines.toml"))
    parser.add_argument(
        "--output", type=Path, default=ROOT / "benchmarks/results/qwen-coder-engines.jsonl"
    )
    parser.add_argument("--audit", action="store_true", help="Also run the greedy audit.")
    parser.add_argument("--copy-mb", type=int, default=512)
    parser.add_argument("--json", type=Path, default=None, help="Also write the rows as JSON.")
    args = parser.parse_args()
    console = Console(stderr=True)

    copies = [copy_bandwidth(torch.device("cpu"), args.copy_mb)]
    streams = [stream_bandwidth()]
    console.print(
        f"memory copy bandwidth: {copies[0] / 1e9:.1f} GB/s (read + write); weight stream: "
        + ("-" if streams[0] is None else f"{streams[0] / 1e9:.1f} GB/s")
    )
    resolved = load_preset(args.preset, discover_methods())
    if args.output.exists():
        args.output.unlink()
    started = time.perf_counter()
    load_before = os.getloadavg()[0]

    def progress(p: Any) -> None:
        if p.phase in ("loading", "warmup") or p.last is not None:
            console.print(f"[dim]{time.perf_counter() - started:6.0f}s[/] {p.message}")

    run_preset(resolved, args.output, on_progress=progress)
    wall = time.perf_counter() - started
    load_after = os.getloadavg()[0]
    # Measured again at the end: this machine's bandwidth drifts by tens of percent, and the
    # roofline takes the faster measurement (the lower bound on a call's time).
    copies.append(copy_bandwidth(torch.device("cpu"), args.copy_mb))
    streams.append(stream_bandwidth())
    copy = max(copies)
    measured_streams = [b for b in streams if b is not None]
    bandwidth = max(measured_streams) if measured_streams else copy
    records = read_records(args.output)
    summaries = [r for r in records if isinstance(r, SummaryRecord)]
    header = next(r for r in records if isinstance(r, RunHeader))
    target = resolved.preset.models.target.model  # type: ignore[attr-defined]

    table = Table(
        title=f"Engines on {target} (+ draft), greedy, {summaries[0].samples} MT-Bench prompts, "
        f"{resolved.preset.sampling.max_new_tokens} new tokens"
    )
    for column in (
        "engine",
        "row",
        "weights",
        "ms/token",
        "tokens/call",
        "acceptance",
        "own speedup",
        "vs specbench baseline",
        "= own baseline",
        "roofline ms/call",
        "% of roofline",
        "% of copy roofline",
        "draft",
        "target",
        "verify",
        "host",
        "predicted",
        "measured/predicted",
    ):
        table.add_column(column, justify="left" if column in ("engine", "row") else "right")
    rows = []
    for s in summaries:
        engine = (s.engine or "specbench").split(" ")[0]
        dtype = str(getattr(resolved.preset.models.target, "dtype", "bfloat16"))
        kind, size = weight_bytes(engine, target, dtype)
        phases = s.ms_per_token_by_phase or {}
        ratio = (
            s.measured_ms_per_token / s.predicted_ms_per_token
            if s.measured_ms_per_token and s.predicted_ms_per_token
            else None
        )
        # A target call streams the weights once; memory moves `bandwidth` bytes a second.
        roofline_ms = size / bandwidth * 1e3
        copy_roofline_ms = size / copy * 1e3
        ms = 1e3 / s.tokens_per_sec_median
        own = s.reference_speedup
        own_ci = s.reference_speedup_ci
        row = {
            "engine": s.engine or f"specbench {header.environment.get('specbench', '')}".strip(),
            "method": s.method,
            "weights": kind,
            "weight_bytes": size,
            "ms_per_token": ms,
            "tokens_per_call": s.avg_tokens_per_step,
            "acceptance": s.acceptance_rate,
            "own_speedup": own,
            "own_speedup_ci": own_ci,
            "reference": s.reference,
            "speedup_vs_specbench_baseline": s.speedup,
            "equals_own_baseline": s.greedy_match_rate,
            "roofline_ms_per_call": roofline_ms,
            "stream_bandwidth": bandwidth,
            "copy_bandwidth": copy,
            # The target's roofline time for the calls one token needs, over the time it took.
            "percent_of_roofline": 100 * roofline_ms / (s.avg_tokens_per_step * ms),
            "percent_of_copy_roofline": 100 * copy_roofline_ms / (s.avg_tokens_per_step * ms),
            "ms_per_token_by_phase": phases,
            "predicted_ms_per_token": s.predicted_ms_per_token,
            "measured_over_predicted": ratio,
            "cost_gap_phase": s.cost_gap_phase,
        }
        rows.append(row)
        plain = s.reference == s.method
        table.add_row(
            row["engine"],
            s.method,
            kind,
            f"{ms:.1f}",
            f"{s.avg_tokens_per_step:.2f}",
            "-" if s.acceptance_rate is None else f"{s.acceptance_rate:.3f}",
            "1.00x (reference)"
            if plain
            else "-"
            if own is None
            else f"{own:.2f}x" + ("" if own_ci is None else f" [{own_ci[0]:.2f}-{own_ci[1]:.2f}]"),
            "-" if s.speedup is None else f"{s.speedup:.2f}x",
            "-" if s.greedy_match_rate is None else f"{100 * s.greedy_match_rate:.0f}%",
            f"{roofline_ms:.1f}",
            f"{row['percent_of_roofline']:.0f}%",
            f"{row['percent_of_copy_roofline']:.0f}%",
            *(_ms(phases.get(name)) for name in ("draft", "target", "verify", "host")),
            _ms(s.predicted_ms_per_token),
            "-"
            if ratio is None
            else f"{ratio:.2f}x" + (f" ({s.cost_gap_phase})" if s.cost_gap_phase else ""),
        )
    out = Console(width=240)  # the whole table, also when piped to a file
    out.print(table)
    level = next((s.cost_level for s in summaries if s.cost_level is not None), None)
    out.print(
        f"results: {args.output}; wall {wall / 60:.1f} min; load average {load_before:.2f} at "
        f"start, {load_after:.2f} at the end ({os.cpu_count()} CPUs, flags "
        f"{' '.join(cpu_flags()) or 'unknown'}, torch CPU capability "
        f"{torch.backends.cpu.get_cpu_capability()}); copy bandwidth "
        + " and ".join(f"{b / 1e9:.1f}" for b in copies)
        + " GB/s (read + write, start and end), weight stream "
        + " and ".join("-" if b is None else f"{b / 1e9:.1f}" for b in streams)
        + " GB/s (one row times a 1 GiB bf16 weight, start and end). roofline ms/call = the "
        "target's weight bytes / the faster weight stream (the copy bandwidth where the "
        "kernel cannot run); % of roofline = roofline time of the target calls a token needs / "
        "measured time per token (draft costs not included); % of copy roofline: the same "
        "with the faster copy bandwidth (this table's measure before 2026-12-05). "
        "draft/target/verify/host: the "
        "cost ledger, ms per token (mean over all tokens, each batch once); predicted: the "
        "row's forwards at the run's unit costs"
        + ("" if level is None else f", priced at the run's own speed ({level:.2f}x the probe)")
        + "; '-': a phase the row cannot measure."
    )
    chart = plot_costs([load_results(args.output)], args.output.with_suffix(".costs.png"))
    out.print(f"cost chart: {chart}")
    if args.audit:
        audit_path = args.output.with_suffix(".audit.jsonl")
        if audit_path.exists():
            audit_path.unlink()
        outcome = audit_preset(resolved, AuditOptions(), audit_path)
        audit = Table(title="Greedy audit (each engine against its own plain decoding)")
        for column in ("row", "verdict", "detail"):
            audit.add_column(column)
        for record in outcome.records:
            audit.add_row(record.method, record.verdict, record.detail)
        out.print(audit)
        out.print(f"audit: {audit_path}")
    if args.json is not None:
        args.json.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":  # vLLM spawns its engine process: keep the entry import-safe
    main()
