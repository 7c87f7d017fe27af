"""Paired per-prompt speed ratios between methods of one results file.

Rows of one run decode prompt by prompt, so a machine's drift hits the rows of one prompt
alike: the ratio of two methods' tokens/s on the same prompt cancels it, where a ratio of
medians over prompts does not. Prints, for each pair ``a:b``, the median and range over the
prompts both decoded (samples with an error left out, every run of a prompt averaged).

    python benchmarks/paired.py benchmarks/results/qwen-coder-ledger-bf16.jsonl \\
        speculative-k3-static:hf-assisted-k3 baseline:hf-generate-shipped
"""

from __future__ import annotations

import argparse
import statistics
from collections import defaultdict
from pathlib import Path

from specbench.records import SampleRecord, read_records


def tokens_per_sec(path: Path) -> dict[str, dict[str, float]]:
    """Per method label and prompt id: the mean tokens/s of its finished samples."""
    speeds: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for record in read_records(path):
        if isinstance(record, SampleRecord) and record.error is None:
            speeds[record.method][record.prompt_id].append(record.tokens_per_sec)
    return {
        method: {prompt: statistics.fmean(values) for prompt, values in prompts.items()}
        for method, prompts in speeds.items()
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results", type=Path)
    parser.add_argument("pairs", nargs="+", help="a:b, the ratio a's tokens/s over b's")
    args = parser.parse_args()
    speeds = tokens_per_sec(args.results)
    for pair in args.pairs:
        a, _, b = pair.partition(":")
        missing = [m for m in (a, b) if m not in speeds]
        if missing:
            parser.error(
                f"{args.results} has no samples of {', '.join(missing)}; "
                f"name one of its methods: {', '.join(sorted(speeds))}"
            )
        shared = sorted(set(speeds[a]) & set(speeds[b]))
        ratios = [speeds[a][p] / speeds[b][p] for p in shared]
        print(
            f"{a} over {b}: {statistics.median(ratios):.2f}x "
            f"({min(ratios):.2f}-{max(ratios):.2f}) on {len(ratios)} prompts"
        )


if __name__ == "__main__":
    main()
