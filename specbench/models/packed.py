"""Linear layers with their weights reordered once for a fast CPU kernel.

At batch one a decoding step streams every weight once, so its speed is the speed of the
kernel that reads them. ``F.linear`` on a CPU hands a plain row-major weight to oneDNN or
MKL for every call; a weight reordered once into a kernel's blocked layout is read as it lies.
Two kernels read packed weights (the model spec's ``linear_kernel``):

- ``specbench`` (:mod:`specbench.models.bf16_kernels`): specbench's own bf16 kernel, the
  fastest here for one to a few rows and batch-invariant by construction; bf16 only.
- ``onednn``: oneDNN's blocked layout (``torch.ops.mkldnn._reorder_linear_weight``, what
  inductor's CPU freezing emits). On a 2-core AVX-512 BF16 EPYC (``benchmarks/linear_kernels.py``,
  BENCHMARKS.md) a Qwen2.5-1.5B-shaped bf16 stack streamed at 19 GB/s through ``F.linear``
  and at 27 GB/s packed for one row, 37 GB/s packed for 3 to 5 rows: oneDNN's kernels for one
  or two rows are slower than its kernel for a few. So a call with fewer than
  :data:`ROW_FLOOR` rows is padded to it (its first row repeated, the copies dropped after):
  a one-token decoding step then costs what a 4-row verification costs, and both run on the
  same multi-row kernel, whose result for a row does not depend on how many rows share the
  call (checked bit for bit in that script and, for the whole model, by
  :mod:`specbench.models.invariance` at load).

The dense weight stays in place (tied embeddings, heads and training read it); the packed
copy is what inference reads, so packing costs the weights' size again in memory.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, cast

import torch

from specbench.errors import ModelLoadError
from specbench.models import bf16_kernels
from specbench.models.specs import LinearKernel

#: Rows a packed call computes at least (fewer are padded): the fastest small-row kernel in
#: the measurement above, and at least 2, so no call takes the one-row path.
ROW_FLOOR = 4


def packing_available(weight: torch.Tensor) -> bool:
    """Whether this torch build and CPU can run ``weight`` as a packed linear."""
    if weight.device.type != "cpu" or not torch.backends.mkldnn.is_available():  # type: ignore[no-untyped-call]
        return False
    if weight.dtype == torch.bfloat16:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    return weight.dtype == torch.float32


@dataclass(frozen=True)
class PackedWeight:
    """A weight in one kernel's layout, and how to multiply by it."""

    kernel: Literal["specbench", "onednn"]
    data: torch.Tensor
    out_features: int

    def linear(self, x: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        """``x @ W.T + bias``."""
        if self.kernel == "specbench":
            return bf16_kernels.linear(x, self.data, self.out_features, bias)
        return _onednn_linear(x, self.data, bias)


def pack_weight(
    weight: torch.Tensor, kernel: Literal["specbench", "onednn"], few_rows: bool = False
) -> PackedWeight:
    """``weight`` ``[out, in]`` reordered for ``kernel`` (see :func:`kernel_for`);
    ``few_rows``: in specbench's layout for calls of one or two rows, where it has one."""
    if kernel == "specbench":
        return PackedWeight("specbench", bf16_kernels.pack(weight, few_rows), weight.shape[0])
    with torch.no_grad():
        data: torch.Tensor = torch.ops.mkldnn._reorder_linear_weight(weight.detach(), ROW_FLOOR)
    return PackedWeight("onednn", data, weight.shape[0])


def _onednn_linear(
    x: torch.Tensor, packed: torch.Tensor, bias: torch.Tensor | None
) -> torch.Tensor:
    """oneDNN's packed product, at least :data:`ROW_FLOOR` rows per call."""
    rows = x.reshape(-1, x.shape[-1])
    m = rows.shape[0]
    if m < ROW_FLOOR:
        rows = torch.cat([rows, rows[:1].expand(ROW_FLOOR - m, -1)])
    out: torch.Tensor = torch.ops.mkldnn._linear_pointwise(rows, packed, bias, "none", [], "")
    return out[:m].reshape(*x.shape[:-1], out.shape[-1])


def kernel_for(
    weight: torch.Tensor, requested: LinearKernel, specbench_unavailable: str | None
) -> Literal["specbench", "onednn"] | None:
    """The kernel a layer with ``weight`` runs for a spec's ``linear_kernel``, or ``None``
    when no packed kernel applies (that layer keeps ``F.linear``)."""
    if requested != "onednn" and specbench_unavailable is None and bf16_kernels.supports(weight):
        return "specbench"
    return "onednn" if packing_available(weight) else None


class PackedLinear(torch.nn.Linear):
    """``nn.Linear`` that reads a packed copy of its weight (see the module docstring).

    Made from an existing layer by :func:`pack_linear_layers` (the class is swapped in place,
    no parameter is copied). Where gradients are wanted it runs ``F.linear`` on the dense
    weight, which training updates (the packed copy is for inference); under
    ``torch.compile`` too, since inductor packs (or not) as it chooses.
    """

    packed_weight: PackedWeight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.compiler.is_compiling() or (
            torch.is_grad_enabled() and (x.requires_grad or self.weight.requires_grad)
        ):
            return super().forward(x)
        return self.packed_weight.linear(x, self.bias)


def pack_linear_layers(
    model: torch.nn.Module,
    kinds: tuple[type, ...],
    requested: LinearKernel = "auto",
    few_rows: bool = False,
) -> dict[str, object]:
    """Give every layer of ``model`` whose type is exactly one of ``kinds`` a packed weight,
    in place, on the kernel ``requested``; what the run header records: the layers packed,
    the kernels they run, their layout, and why ``auto`` did not take specbench's kernel
    where it did not. ``few_rows``: specbench's kernel lays the weights out for calls of one
    or two rows (a draft's steps; :func:`specbench.models.bf16_kernels.pack`).

    Raises :class:`ModelLoadError` when ``requested`` is ``specbench`` and it cannot run here.
    """
    layers = [
        module
        for module in model.modules()
        if type(module) in kinds and isinstance(module, torch.nn.Linear)
    ]
    own_layers = any(bf16_kernels.supports(m.weight) for m in layers)
    wants_own = requested != "onednn" and own_layers
    unavailable = bf16_kernels.unavailable_reason() if wants_own else None
    if requested == "specbench":
        if not own_layers:
            raise ModelLoadError(
                'linear_kernel = "specbench" runs bfloat16 weights on the CPU only',
                'set dtype = "bfloat16" and a CPU device, or linear_kernel = "auto"',
            )
        if unavailable is not None:
            raise ModelLoadError(
                f'linear_kernel = "specbench" cannot run here: {unavailable}',
                'set linear_kernel = "auto" (oneDNN where it cannot) or "onednn"',
            )
    kernels: dict[str, int] = {}
    for module in layers:
        kernel = kernel_for(module.weight, requested, unavailable)
        if kernel is None:
            continue
        packed = pack_weight(module.weight, kernel, few_rows)
        module.__class__ = PackedLinear
        cast(PackedLinear, module).packed_weight = packed
        kernels[kernel] = kernels.get(kernel, 0) + 1
    return {
        "packed_linear_layers": sum(kernels.values()),
        "linear_kernels": kernels,
        "packed_row_floor": ROW_FLOOR if "onednn" in kernels else None,
        # The kernel's instruction path: its results differ between paths (not within one).
        "linear_kernel_isa": bf16_kernels.isa() if "specbench" in kernels else None,
        # Same results either way; only the speed by rows per call differs.
        "linear_kernel_layout": _layout_name(few_rows) if "specbench" in kernels else None,
        "linear_kernel_note": (
            f"specbench's bf16 kernel is not used: {unavailable}"
            if unavailable is not None
            else None
        ),
    }


def _layout_name(few_rows: bool) -> str:
    """The layout specbench's kernel packed in: the AVX-512 path has one for any rows."""
    if bf16_kernels.isa() != "avx2":
        return "any rows"
    return "few rows" if few_rows else "several rows"
