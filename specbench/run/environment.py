"""The environment a run header records: versions, hardware, installed plugins."""

from __future__ import annotations

import os
import platform
import sys
from importlib.metadata import PackageNotFoundError, version
from typing import Any

import torch

import specbench
from specbench.plugins import discover_methods

_OPTIONAL_PACKAGES = ("transformers", "accelerate", "bitsandbytes", "optimum-quanto", "gguf")


def collect_environment() -> dict[str, Any]:
    """Versions, CPU and GPU facts that explain a run's timings."""
    registry = discover_methods()
    packages = {name: _version(name) for name in _OPTIONAL_PACKAGES}
    env: dict[str, Any] = {
        "specbench": specbench.__version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": _version("numpy"),
        "platform": platform.platform(),
        "machine": platform.machine(),
        "cpu": _cpu_name(),
        "cpu_flags": cpu_flags(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "packages": {k: v for k, v in packages.items() if v is not None},
        "method_plugins": {
            info.name: f"{info.package} {info.version}" for info in registry.methods.values()
        },
        "cuda_available": torch.cuda.is_available(),
        "argv": sys.argv,
    }
    if torch.cuda.is_available():
        env["cuda"] = torch.version.cuda
        env["gpus"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    return env


def _version(package: str) -> str | None:
    try:
        return version(package)
    except PackageNotFoundError:
        return None


#: The instruction sets that decide which kernel path (and rounding) a matmul takes.
KERNEL_FLAGS = ("avx2", "avx512f", "avx512_bf16", "avx512_fp16", "avx512_vnni", "amx_bf16")


def cpu_flags() -> list[str]:
    """Which of :data:`KERNEL_FLAGS` this CPU has (empty where /proc/cpuinfo is unreadable):
    timings and numerics of one machine hold for machines with the same flags only."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            for line in handle:
                if line.startswith("flags"):
                    present = set(line.split(":", 1)[1].split())
                    return [flag for flag in KERNEL_FLAGS if flag in present]
    except OSError:
        pass
    return []


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            for line in handle:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"
