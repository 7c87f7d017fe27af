"""specbench's own bf16 CPU kernels: the matrix product of linear layers
(``linear_kernel = "specbench"``) and the decoder-layer operations around it.

A decoding step at batch one multiplies one row (k + 1 in a verification) by every weight
matrix: its speed is the speed at which a kernel streams the weights. On a 2-core AVX-512
BF16 EPYC, oneDNN's packed kernels (:mod:`specbench.models.packed`) streamed a
Qwen2.5-1.5B-shaped stack at 38-40 GB/s for one to five rows and the 0.5B draft's narrower
matrices at 22-30 GB/s; this kernel (``bf16_gemm.cpp``: a weight packed in blocks of 64
outputs, AVX-512 BF16 pair dot products on a broadcast input) streamed both at 48-53 GB/s in
the same minutes (``benchmarks/linear_kernels.py``, BENCHMARKS.md), and is within 4% of
oneDNN for prefill-sized calls.

It also makes batch invariance a property of the code rather than of a library's choice of
kernel: every output is accumulated in one fixed order whatever the number of rows, so a row
scored among k + 1 equals the row decoded alone on every CPU that runs it (oneDNN takes other
kernels by row count and, on AMX machines, other instructions).

The same extension holds a decoder layer's other operations (``bf16_decode.cpp``: RMSNorm,
rotary embedding with the cache writes, grouped attention, the gated activation), which
:mod:`specbench.models.hf.fused_layers` puts in place of a few dozen torch operators per layer.

The kernel is a small C++ extension compiled on first use with the machine's C++ compiler
and ninja (about 25 s, once per torch build; cached in torch's extension folder,
``$TORCH_EXTENSIONS_DIR`` or ``~/.cache/torch_extensions``, shared by every process whatever
its specbench cache). Every operation has two paths: AVX-512 BF16, and AVX2 + FMA for CPUs
without it (:func:`isa`; on an AVX2-only EPYC oneDNN's bf16 product took 356 ms for a 1.5B
step that transformers' own ``F.linear`` ran in 190 ms); a process runs one. Where the
kernel cannot run at all (no AVX2, no compiler, a failed build) :func:`unavailable_reason`
says why and the loader falls back to oneDNN, recording the reason in the model's
description.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from specbench.hardware import cpu_missing

SOURCES = [
    Path(__file__).with_name(name)
    for name in ("bf16_gemm.cpp", "bf16_decode.cpp", "bf16_bindings.cpp")
]
#: Headers the sources include: torch's extension cache hashes only ``SOURCES``, so their
#: digest goes into the build flags (a changed header rebuilds the extension).
HEADERS = [Path(__file__).with_name(name) for name in ("bf16_ops.h", "bf16_decode_rows.h")]

#: The instruction sets of the kernels' two paths.
AVX512_BF16_FLAGS = ("avx512f", "avx512bw", "avx512vl", "avx512_bf16")
AVX2_FLAGS = ("avx2", "fma")
#: Set to ``avx2`` to take the AVX2 path on a CPU that has AVX-512 BF16 (to compare them).
ISA_VARIABLE = "SPECBENCH_BF16_ISA"

#: The extension's name: a new name when the interface changes, and one per torch build, so
#: builds for another interface or torch never mix in torch's extension cache.
EXTENSION = "specbench_bf16_v3_torch_" + "".join(
    c if c.isalnum() else "_" for c in torch.__version__
)


class KernelUnavailable(RuntimeError):
    """The kernel cannot run here; the message says why."""


def unavailable_reason() -> str | None:
    """Why the kernel cannot run on this machine, or ``None`` when it can (builds it once)."""
    try:
        _extension()
    except KernelUnavailable as error:
        return str(error)
    return None


def cpu_lacks(name: str) -> str | None:
    """Why this CPU cannot take path ``name`` (``avx512_bf16`` or ``avx2``), or ``None``."""
    if name not in ("avx512_bf16", "avx2"):
        raise ValueError(f"unknown path {name!r}")
    missing = cpu_missing(*(AVX512_BF16_FLAGS if name == "avx512_bf16" else AVX2_FLAGS))
    return f"this CPU lacks {', '.join(missing)}" if missing else None


def isa() -> str:
    """The kernels' instruction path in this process: ``avx512_bf16`` or ``avx2``."""
    _extension()
    return _chosen_isa[0]


@contextlib.contextmanager
def use_isa(name: str) -> Iterator[None]:
    """Run the kernels on path ``name`` inside the block (tests and benchmarks compare
    the paths on one CPU); raises :class:`KernelUnavailable` where the CPU lacks it."""
    extension = _extension()
    lacks = cpu_lacks(name)
    if lacks:
        raise KernelUnavailable(lacks)
    saved = _chosen_isa[0]
    extension.set_isa(name == "avx512_bf16")
    _chosen_isa[0] = name
    try:
        yield
    finally:
        extension.set_isa(saved == "avx512_bf16")
        _chosen_isa[0] = saved


def supports(weight: torch.Tensor) -> bool:
    """Whether ``weight`` (``[out, in]``) is a layer this kernel computes: bf16 on the CPU,
    an even input size."""
    return (
        weight.device.type == "cpu"
        and weight.dtype == torch.bfloat16
        and weight.dim() == 2
        and weight.shape[1] % 2 == 0
    )


def pack(weight: torch.Tensor, few_rows: bool = False) -> torch.Tensor:
    """``weight`` ``[out, in]`` in the kernel's blocked layout (a new tensor). ``few_rows``:
    laid out for calls of one or two rows (a draft model's steps) where the path has such a
    layout (AVX2: faster for 1-3 rows, slower for 4; the results are the same bit for bit)."""
    with torch.no_grad():
        packed: torch.Tensor = _extension().pack(weight.detach().contiguous(), few_rows)
    return packed


def packed_for_few_rows(packed: torch.Tensor) -> bool:
    """Whether ``packed`` (from :func:`pack`) is in the layout for one or two rows."""
    return packed.dim() == 5 and packed.shape[3] == 4


def linear(
    x: torch.Tensor, packed: torch.Tensor, out_features: int, bias: torch.Tensor | None
) -> torch.Tensor:
    """``x @ W.T + bias`` for a ``W`` packed by :func:`pack` (``out_features`` rows)."""
    out: torch.Tensor = _extension().linear(x, packed, out_features, bias)
    return out


def ops() -> Any:
    """The extension's decoder-layer functions (``rms_norm``, ``add_rms_norm``, ``silu_mul``,
    ``rotary_write``, ``rotary_split``, ``attend``; ``bf16_decode.cpp`` documents each), on
    the path :func:`isa` names; raises :class:`KernelUnavailable` where the kernel cannot run."""
    return _extension()


#: The path the extension's operations take (one element, set when it loads).
_chosen_isa = ["avx2"]


@functools.cache
def _extension() -> Any:
    lacks = cpu_lacks("avx2")
    if lacks:
        raise KernelUnavailable(lacks)
    wanted = os.environ.get(ISA_VARIABLE, "").strip().lower()
    if wanted not in ("", "avx2", "avx512_bf16"):
        raise KernelUnavailable(f"{ISA_VARIABLE}={wanted!r} is neither avx2 nor avx512_bf16")
    extension = _build()
    fast = cpu_lacks("avx512_bf16") is None and wanted != "avx2"
    if wanted == "avx512_bf16" and not fast:
        raise KernelUnavailable(f"{ISA_VARIABLE}=avx512_bf16 but this CPU lacks AVX-512 BF16")
    extension.set_isa(fast)
    _chosen_isa[0] = "avx512_bf16" if fast else "avx2"
    return extension


def _build() -> Any:
    if not torch.backends.openmp.is_available():  # type: ignore[no-untyped-call]
        raise KernelUnavailable("this torch build has no OpenMP (the kernel's threads)")
    from torch.utils import cpp_extension

    try:
        with _ninja_on_path():
            return cpp_extension.load(
                name=EXTENSION,
                sources=[str(source) for source in SOURCES],
                # Generic code outside the kernel's functions: they carry their own target
                # attributes, so the cached build runs on any CPU with AVX2_FLAGS.
                extra_cflags=["-O3", "-fopenmp", f"-DSPECBENCH_HEADERS={_headers_digest()}"],
                # libgomp by its soname: the process already has torch's, so both share one
                # thread pool.
                extra_ldflags=["-fopenmp"],
                verbose=False,
            )
    except (OSError, RuntimeError, ImportError, ValueError) as error:
        lines = [line for line in str(error).splitlines() if line.strip()]
        raise KernelUnavailable(
            f"building the kernel failed: {lines[-1] if lines else type(error).__name__}"
        ) from error


def _headers_digest() -> str:
    digest = hashlib.sha256()
    for header in HEADERS:
        digest.update(header.read_bytes())
    return digest.hexdigest()[:16]


@contextlib.contextmanager
def _ninja_on_path() -> Iterator[None]:
    """torch's extension builder runs ``ninja`` from PATH: make the one installed beside this
    Python (the ``ninja`` package) findable when the environment is not activated."""
    extra = [os.path.dirname(sys.executable)]
    with contextlib.suppress(ImportError):
        import ninja

        extra.append(ninja.BIN_DIR)
    saved = os.environ.get("PATH", "")
    os.environ["PATH"] = os.pathsep.join([*extra, saved])
    try:
        yield
    finally:
        os.environ["PATH"] = saved
