"""The environment a run header records: versions, hardware, installed plugins."""

from __future__ import annotations

import os
import platform
import sys
from importlib.metadata import PackageNotFoundError, version
from typing import Any

import torch

import specbench
from specbench.hardware import cpu_flags, cpu_name
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
        "cpu": cpu_name(),
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
