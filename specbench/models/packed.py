"""Linear layers with their weights reordered once for oneDNN: the CPU's fast path.

At batch one a decoding step streams every weight once, so its speed is the speed of the
kernel that reads them. ``F.linear`` on a CPU hands a plain row-major weight to oneDNN or
MKL for every call; a weight reordered once into oneDNN's blocked layout
(``torch.ops.mkldnn._reorder_linear_weight``, what inductor's CPU freezing emits) is read as
it lies. On a 2-core AVX-512 BF16 EPYC (``benchmarks/linear_kernels.py``, BENCHMARKS.md) a
Qwen2.5-1.5B-shaped bf16 stack streamed at 19 GB/s through ``F.linear`` and at 27 GB/s
packed for one row, 37 GB/s packed for 3 to 5 rows: oneDNN's kernels for one or two rows are
slower than its kernel for a few. So a call with fewer than :data:`ROW_FLOOR` rows is padded
to it (its first row repeated, the copies dropped after): a one-token decoding step then costs
what a 4-row verification costs, and both run on the same multi-row kernel, whose result for
a row does not depend on how many rows share the call (checked bit for bit in that script
and, for the whole model, by :mod:`specbench.models.invariance` at load).

The dense weight stays in place (tied embeddings, heads and training read it); the packed
copy is what inference reads, so packing costs the weights' size again in memory.
"""

from __future__ import annotations

import torch

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


def pack_weight(weight: torch.Tensor) -> torch.Tensor:
    """``weight`` ``[out, in]`` reordered for oneDNN (see :func:`packing_available`)."""
    with torch.no_grad():
        packed: torch.Tensor = torch.ops.mkldnn._reorder_linear_weight(weight.detach(), ROW_FLOOR)
    return packed


def packed_linear(x: torch.Tensor, packed: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """``x @ W.T + bias`` with a weight from :func:`pack_weight`, at least :data:`ROW_FLOOR`
    rows per call."""
    rows = x.reshape(-1, x.shape[-1])
    m = rows.shape[0]
    if m < ROW_FLOOR:
        rows = torch.cat([rows, rows[:1].expand(ROW_FLOOR - m, -1)])
    out: torch.Tensor = torch.ops.mkldnn._linear_pointwise(rows, packed, bias, "none", [], "")
    return out[:m].reshape(*x.shape[:-1], out.shape[-1])


class PackedLinear(torch.nn.Linear):
    """``nn.Linear`` that reads a packed copy of its weight (see the module docstring).

    Made from an existing layer by :func:`pack_linear_layers` (the class is swapped in place,
    no parameter is copied). Where gradients are wanted it runs ``F.linear`` on the dense
    weight, which training updates (the packed copy is for inference); under
    ``torch.compile`` too, since inductor packs (or not) as it chooses.
    """

    packed_weight: torch.Tensor

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.compiler.is_compiling() or (
            torch.is_grad_enabled() and (x.requires_grad or self.weight.requires_grad)
        ):
            return super().forward(x)
        return packed_linear(x, self.packed_weight, self.bias)


def pack_linear_layers(model: torch.nn.Module, kinds: tuple[type, ...]) -> int:
    """Give every layer of ``model`` whose type is exactly one of ``kinds`` a packed weight,
    in place; the number of layers packed (0 where packing does not apply)."""
    packed = 0
    for module in model.modules():
        if type(module) not in kinds:
            continue
        assert isinstance(module, torch.nn.Linear)
        if not packing_available(module.weight):
            continue
        module.packed_weight = pack_weight(module.weight)
        module.__class__ = PackedLinear
        packed += 1
    return packed
