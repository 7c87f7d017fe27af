"""The CPU a run is on: its name and the instruction sets that pick kernel paths.

Timings and numerics (batch invariance) of one machine hold for machines with the same flags
only, so the run header records them and the HF backend checks them."""

from __future__ import annotations

import platform

#: The instruction sets that decide which kernel path (and rounding) a matmul takes.
KERNEL_FLAGS = ("avx2", "avx512f", "avx512_bf16", "avx512_fp16", "avx512_vnni", "amx_bf16")


def cpu_flags() -> list[str]:
    """Which of :data:`KERNEL_FLAGS` this CPU has (empty where /proc/cpuinfo is unreadable):
    timings and numerics of one machine hold for machines with the same flags only."""
    present = _all_flags()
    return [flag for flag in KERNEL_FLAGS if flag in present]


def cpu_missing(*flags: str) -> list[str]:
    """Which of ``flags`` this CPU does not list (all of them where /proc/cpuinfo is
    unreadable)."""
    present = _all_flags()
    return [flag for flag in flags if flag not in present]


def _all_flags() -> set[str]:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            for line in handle:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            for line in handle:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"
