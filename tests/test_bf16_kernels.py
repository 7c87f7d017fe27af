"""specbench's bf16 CPU kernel (``specbench/models/bf16_gemm.cpp``): right, and a row's result
independent of the rows beside it, bit for bit, on each instruction path the CPU has
(AVX-512 BF16 and AVX2); and how the loader chooses it.

The kernel tests skip, naming the reason, on a CPU without the path or a machine that
cannot build the kernel; the loader tests run everywhere (they stand in for its absence)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
from kernel_paths import ISAS, needs_kernel

from specbench.errors import ModelLoadError
from specbench.models import bf16_kernels
from specbench.models.packed import PackedLinear, pack_linear_layers

#: [out, in]: a block and a half of outputs, k not a multiple of the 256-wide pass; a
#: Qwen2.5-0.5B key projection; a down projection's long k.
SHAPES = [(96, 300), (128, 896), (64, 4864)]


def _weights(out: int, inp: int) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(out * 7 + inp)
    weight = (torch.randn(out, inp, generator=generator) * 0.05).to(torch.bfloat16)
    bias = torch.randn(out, generator=generator).to(torch.bfloat16)
    return weight, bias


#: specbench's layouts: for calls of several rows (the default), for one or two (a draft's).
LAYOUTS = pytest.mark.parametrize("few_rows", [False, True], ids=["several-rows", "few-rows"])


@pytest.mark.parametrize("isa", ISAS, indirect=True)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: f"{s[0]}x{s[1]}")
@LAYOUTS
def test_product_matches_a_float32_reference(
    shape: tuple[int, int], isa: str, few_rows: bool
) -> None:
    weight, bias = _weights(*shape)
    packed = bf16_kernels.pack(weight, few_rows)
    x = torch.randn(2, 5, shape[1]).to(torch.bfloat16)
    got = bf16_kernels.linear(x, packed, shape[0], bias)
    reference = x.float() @ weight.float().T + bias.float()
    assert got.shape == (2, 5, shape[0]) and got.dtype == torch.bfloat16
    # One bf16 rounding of an fp32 sum: within bf16's relative step of the result.
    assert torch.allclose(got.float(), reference, rtol=2**-7, atol=1e-2)
    without_bias = bf16_kernels.linear(x, packed, shape[0], None)
    assert torch.allclose(without_bias.float(), reference - bias.float(), rtol=2**-7, atol=1e-2)


@pytest.mark.parametrize("isa", ISAS, indirect=True)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: f"{s[0]}x{s[1]}")
@LAYOUTS
def test_a_rows_result_does_not_depend_on_the_rows_beside_it(
    shape: tuple[int, int], isa: str, few_rows: bool
) -> None:
    """Bit for bit, every row of calls of 1 to 14 rows (past two of the kernel's 6-row tiles,
    every remainder; the AVX2 path's 4-row tiles) at every offset, against the same row
    computed alone.

    The first and last input of every row meet weights of +-2^14 that cancel: every sum then
    passes through values whose float32 spacing is near the result's bfloat16 spacing, so any
    change in accumulation order between row counts shows in the rounded outputs (without
    them a reordered float32 sum almost never changes a bfloat16 result)."""
    weight, bias = _weights(*shape)
    weight[:, 0], weight[:, -1] = 2.0**14, -(2.0**14)
    packed = bf16_kernels.pack(weight, few_rows)
    x = torch.randn(14, shape[1]).to(torch.bfloat16)
    x[:, 0] = x[:, -1] = 1.0
    alone = torch.cat(
        [bf16_kernels.linear(x[i : i + 1], packed, shape[0], bias) for i in range(14)]
    )
    for start in range(3):
        for rows in range(1, 15 - start):
            together = bf16_kernels.linear(x[start : start + rows], packed, shape[0], bias)
            assert torch.equal(together, alone[start : start + rows]), (start, rows)


@pytest.mark.parametrize("isa", ISAS, indirect=True)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_both_layouts_give_the_same_result_bit_for_bit(shape: tuple[int, int], isa: str) -> None:
    """A draft packed for few rows and a target packed for several must agree with each
    other (a self-speculation pair, exactness), whatever the rows per call: the layouts
    change only the order the weights are read in, not the order of any sum. (Cancelling
    weights as above, so a reordered sum would show.)"""
    weight, bias = _weights(*shape)
    weight[:, 0], weight[:, -1] = 2.0**14, -(2.0**14)
    several, few = bf16_kernels.pack(weight), bf16_kernels.pack(weight, few_rows=True)
    assert not bf16_kernels.packed_for_few_rows(several)
    assert bf16_kernels.packed_for_few_rows(few) == (isa == "avx2")
    x = torch.randn(14, shape[1]).to(torch.bfloat16)
    x[:, 0] = x[:, -1] = 1.0
    for rows in range(1, 15):
        assert torch.equal(
            bf16_kernels.linear(x[:rows], several, shape[0], bias),
            bf16_kernels.linear(x[:rows], few, shape[0], bias),
        ), rows


@pytest.mark.parametrize("isa", ISAS, indirect=True)
def test_a_result_does_not_depend_on_an_earlier_calls_input(isa: str) -> None:
    """The AVX2 path widens x into a buffer kept between calls, k padded to 16: an earlier
    call's infinities where this call has only padding must not reach it (0 x inf = NaN)."""
    weight, bias = _weights(64, 300)
    packed = bf16_kernels.pack(weight)
    x = torch.randn(3, 300).to(torch.bfloat16)
    before = bf16_kernels.linear(x, packed, 64, bias)
    wide, _ = _weights(64, 304)
    poisoned = torch.randn(3, 304).to(torch.bfloat16)
    poisoned[:, 300:] = float("inf")
    bf16_kernels.linear(poisoned, bf16_kernels.pack(wide), 64, None)
    after = bf16_kernels.linear(x, packed, 64, bias)
    assert torch.isfinite(after).all() and torch.equal(after, before)


@pytest.mark.parametrize("isa", ISAS, indirect=True)
def test_empty_and_single_row_calls(isa: str) -> None:
    weight, _ = _weights(64, 32)
    packed = bf16_kernels.pack(weight)
    assert bf16_kernels.linear(
        torch.empty(0, 32, dtype=torch.bfloat16), packed, 64, None
    ).shape == (
        0,
        64,
    )
    assert bf16_kernels.linear(torch.ones(32, dtype=torch.bfloat16), packed, 64, None).shape == (
        64,
    )


@pytest.mark.parametrize("isa", ISAS, indirect=True)
def test_an_input_of_another_size_is_refused(isa: str) -> None:
    """(The AVX2 layout keeps k rounded up to 16, and tells an input's size to that.)"""
    weight, _ = _weights(64, 300)
    packed = bf16_kernels.pack(weight)
    for size in (288, 306):
        with pytest.raises(RuntimeError, match=f"x has {size} features"):
            bf16_kernels.linear(torch.ones(1, size, dtype=torch.bfloat16), packed, 64, None)


@needs_kernel
def test_a_weight_in_the_other_paths_layout_is_refused_not_run() -> None:
    """The paths pack differently; the AVX-512 code would fault on an AVX2 CPU, so a layout
    runs on its own path only. The other layout is forged by its shape: one CPU here may
    have a single path."""
    own = bf16_kernels.pack(_weights(192, 32)[0])
    other = (3, 16, 64, 2) if own.dim() == 5 else (3, 32, 2, 2, 16)
    forged = torch.zeros(other, dtype=torch.bfloat16)
    with pytest.raises(RuntimeError, match=r"packed for the .* path but the kernels run on"):
        bf16_kernels.linear(torch.ones(1, 32, dtype=torch.bfloat16), forged, 192, None)


def _model(dtype: torch.dtype) -> torch.nn.Module:
    return torch.nn.Sequential(torch.nn.Linear(32, 64), torch.nn.Linear(64, 8)).to(dtype)


def test_every_included_header_is_in_the_build_flags_digest(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """torch's extension cache hashes the listed sources only: a header left out of
    ``HEADERS`` could change without a rebuild, and the machine would keep running the old
    code."""
    included = {
        name
        for source in [*bf16_kernels.SOURCES, *bf16_kernels.HEADERS]
        for name in re.findall(r'#include "([^"]+)"', source.read_text())
    }
    assert included == {header.name for header in bf16_kernels.HEADERS}
    header = tmp_path / "rows.h"
    header.write_text("int a;")
    monkeypatch.setattr(bf16_kernels, "HEADERS", [header])
    before = bf16_kernels._headers_digest()
    header.write_text("int b;")
    assert bf16_kernels._headers_digest() != before


@needs_kernel
def test_auto_packs_bf16_layers_on_specbench_kernel() -> None:
    model = _model(torch.bfloat16)
    x = torch.randn(3, 32).to(torch.bfloat16)
    dense = model(x)
    info = pack_linear_layers(model, (torch.nn.Linear,), "auto")
    assert info["linear_kernels"] == {"specbench": 2} and info["linear_kernel_note"] is None
    assert all(isinstance(m, PackedLinear) for m in model)
    with torch.no_grad():
        assert torch.allclose(model(x).float(), dense.float(), rtol=2**-7, atol=1e-2)


def test_auto_falls_back_to_onednn_and_says_why(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(bf16_kernels, "unavailable_reason", lambda: "this CPU lacks avx512_bf16")
    model = _model(torch.float32)
    info = pack_linear_layers(model, (torch.nn.Linear,), "auto")
    assert "specbench" not in info["linear_kernels"]  # float32: not its dtype, no note
    assert info["linear_kernel_note"] is None
    model = _model(torch.bfloat16)
    info = pack_linear_layers(model, (torch.nn.Linear,), "auto")
    assert "specbench" not in info["linear_kernels"]
    assert info["linear_kernel_note"] == (
        "specbench's bf16 kernel is not used: this CPU lacks avx512_bf16"
    )


def test_asking_for_specbench_kernel_where_it_cannot_run_is_one_line_with_a_fix(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    with pytest.raises(ModelLoadError, match="bfloat16 weights on the CPU only") as error:
        pack_linear_layers(_model(torch.float32), (torch.nn.Linear,), "specbench")
    assert 'linear_kernel = "auto"' in str(error.value)
    monkeypatch.setattr(bf16_kernels, "unavailable_reason", lambda: "building the kernel failed: x")
    with pytest.raises(ModelLoadError, match="cannot run here: building the kernel failed"):
        pack_linear_layers(_model(torch.bfloat16), (torch.nn.Linear,), "specbench")


def test_a_run_says_when_auto_could_not_take_specbench_kernel(
    tiny_hf: dict, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("transformers")
    from specbench.models.loading import load_models
    from specbench.models.specs import HFModelSpec, ModelsSpec

    monkeypatch.setattr(bf16_kernels, "unavailable_reason", lambda: "this CPU lacks avx512_bf16")
    folder = str(tiny_hf["llama"]["target"])
    spec = ModelsSpec(target=HFModelSpec(model=folder, dtype="bfloat16", device="cpu"))
    said: list[str] = []
    models = load_models(spec, on_progress=said.append)
    assert models.target.describe()["linear_kernel_note"]
    assert (
        "target: specbench's bf16 kernel is not used: this CPU lacks avx512_bf16; the oneDNN "
        "kernel runs instead"
    ) in said
