"""Per-method totals a run's summary table does not show, read from a results JSONL.

Draft calls per target call (summed over prompts), answers stopped at the token limit, GSM8K
answers right, outputs equal to the baseline, and AutoJudge's mean share of mismatches kept.

    python benchmarks/record_totals.py benchmarks/results/qwen-coder-gsm8k-autojudge-285.jsonl
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path

from specbench.records import SampleRecord, read_records


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results", type=Path)
    args = parser.parse_args()
    by_method: dict[str, list[SampleRecord]] = {}
    for record in read_records(args.results):
        if isinstance(record, SampleRecord):
            by_method.setdefault(record.method, []).append(record)
    print("| method | n | draft / target calls | at the limit | right | = baseline | judge keeps |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for method, samples in by_method.items():
        target_calls = sum(s.target_calls for s in samples)
        draft_calls = sum(s.draft_calls for s in samples)
        kept = [s.stats["judge_accept_rate"] for s in samples if "judge_accept_rate" in s.stats]
        print(
            f"| {method} | {len(samples)} | {draft_calls} / {target_calls} = "
            f"{draft_calls / target_calls:.2f} "
            f"| {sum(s.stop_reason == 'length' for s in samples)} "
            f"| {sum(bool(s.score) for s in samples)} "
            f"| {sum(bool(s.matches_baseline) for s in samples)} "
            f"| {f'{statistics.mean(kept):.0%}' if kept else '-'} |"
        )


if __name__ == "__main__":
    main()
