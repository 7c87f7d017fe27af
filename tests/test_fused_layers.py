"""specbench's fused decoder-layer operations (``bf16_decode.cpp``, ``hf/fused_layers.py``):
each equals transformers' operators (bit for bit where no sum is involved, to bf16 rounding
where one is), a row's result does not depend on the rows beside it, and the loader applies
them where specbench's linear kernel runs and nowhere else.

Each operation is tested on every instruction path the CPU has (AVX-512 BF16, AVX2); the
tests skip, naming the reason, a path the CPU lacks or a machine that cannot build the kernel."""

from __future__ import annotations

import pytest
import torch
from kernel_paths import ISAS, needs_kernel

from specbench.models import bf16_kernels

pytest.importorskip("transformers")


def _normal(*shape: int, seed: int = 0, scale: float = 1.0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return (torch.randn(*shape, generator=generator) * scale).to(torch.bfloat16)


def _ulps_apart(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """How many bf16 steps apart the elements are (same-sign values)."""
    return (a.view(torch.int16).int() - b.view(torch.int16).int()).abs()


@pytest.mark.parametrize("isa", ISAS, indirect=True)
def test_rms_norm_is_transformers_norm_to_one_rounding_and_row_independent(isa: str) -> None:
    from transformers.models.qwen2.modeling_qwen2 import Qwen2RMSNorm

    ops = bf16_kernels.ops()
    norm = Qwen2RMSNorm(1536, eps=1e-6).to(torch.bfloat16)
    with torch.no_grad():
        norm.weight.copy_(_normal(1536, seed=1))
    x = _normal(9, 1536, seed=2, scale=3.0)
    with torch.no_grad():
        expected = norm(x)
    got = ops.rms_norm(x, norm.weight, 1e-6)
    apart = _ulps_apart(got, expected)
    # The mean of squares is summed in another order than torch's: at most one rounding step.
    assert int(apart.max()) <= 1 and float((apart > 0).float().mean()) < 0.01
    alone = torch.cat([ops.rms_norm(x[i : i + 1], norm.weight, 1e-6) for i in range(9)])
    assert torch.equal(alone, got)
    total, normed = ops.add_rms_norm(x, x.flip(0), norm.weight, 1e-6)
    assert torch.equal(total, x + x.flip(0))  # torch's bf16 sum, bit for bit
    assert torch.equal(normed, ops.rms_norm(total, norm.weight, 1e-6))


@pytest.mark.parametrize("isa", ISAS, indirect=True)
def test_silu_mul_is_torchs_activation_to_one_rounding(isa: str) -> None:
    gate_up = _normal(3, 2 * 4864, seed=3, scale=4.0)
    gate, up = gate_up.chunk(2, dim=-1)
    expected = torch.nn.functional.silu(gate) * up
    got = bf16_kernels.ops().silu_mul(gate_up)
    apart = _ulps_apart(got, expected)
    assert got.shape == (3, 4864)
    assert int(apart.max()) <= 1 and float((apart > 0).float().mean()) < 0.01
    assert torch.equal(bf16_kernels.ops().silu_mul(gate_up[1:2]), got[1:2])


@pytest.mark.parametrize("isa", ISAS, indirect=True)
@pytest.mark.parametrize("dim", [128, 64, 16])
def test_rotary_write_is_transformers_rotation_bit_for_bit(dim: int, isa: str) -> None:
    from transformers.models.qwen2.modeling_qwen2 import apply_rotary_pos_emb

    heads, kv_heads, m, start = 6, 2, 3, 5
    qkv = _normal(1, m, (heads + 2 * kv_heads) * dim, seed=4)
    angles = torch.arange(start, start + m).float()[:, None] * torch.rand(dim // 2)
    angles = torch.cat([angles, angles], dim=-1)[None]
    cos, sin = angles.cos().to(torch.bfloat16), angles.sin().to(torch.bfloat16)
    keys = torch.zeros(1, kv_heads, 16, dim, dtype=torch.bfloat16)
    values = torch.zeros_like(keys)
    query = bf16_kernels.ops().rotary_write(qkv, cos, sin, heads, kv_heads, keys, values, start)
    q, k, v = qkv.split([heads * dim, kv_heads * dim, kv_heads * dim], dim=-1)
    shape = (1, m, -1, dim)
    q, k = apply_rotary_pos_emb(
        q.view(shape).transpose(1, 2), k.view(shape).transpose(1, 2), cos, sin
    )
    assert torch.equal(query, q)
    assert torch.equal(keys[:, :, start : start + m], k)
    assert torch.equal(values[:, :, start : start + m], v.view(shape).transpose(1, 2))
    assert not keys[:, :, :start].any() and not keys[:, :, start + m :].any()
    # Without a cache (transformers' forward, the eager engine): the same rotation.
    split_q, split_k, split_v = bf16_kernels.ops().rotary_split(qkv, cos, sin, heads, kv_heads)
    assert torch.equal(split_q.view(1, m, heads, dim).transpose(1, 2), q)
    assert torch.equal(split_k.view(1, m, kv_heads, dim).transpose(1, 2), k)
    assert torch.equal(
        split_v.view(1, m, kv_heads, dim).transpose(1, 2), v.view(shape).transpose(1, 2)
    )


@pytest.mark.parametrize("isa", ISAS, indirect=True)
@pytest.mark.parametrize("per_group", [1, 6])
def test_attention_is_grouped_attention_to_rounding_and_row_independent(
    per_group: int, isa: str
) -> None:
    from specbench.models.hf.fused_layers import fused_attention
    from specbench.models.hf.numerics import grouped_attention

    groups, dim, rows, length = 2, 128, 5, 203
    query = _normal(1, groups * per_group, rows, dim, seed=5)
    keys = _normal(1, groups, length, dim, seed=6)
    values = _normal(1, groups, length, dim, seed=7)
    allowed = torch.ones(rows, length, dtype=torch.bool).tril(length - rows)
    mask = torch.zeros(1, 1, rows, length, dtype=torch.bfloat16)
    mask.masked_fill_(~allowed, torch.finfo(torch.bfloat16).min)
    got = fused_attention(query, keys, values, mask, 0.088)
    expected, _ = grouped_attention(query, keys, values, mask, 0.088)
    assert got.shape == expected.shape == (1, rows, groups * per_group, dim)
    assert torch.allclose(got.float(), expected.float(), atol=2e-2, rtol=2**-6)
    for row in range(rows):  # alone, over its own keys, no mask: the decoding step
        end = length - rows + row + 1
        alone = fused_attention(
            query[:, :, row : row + 1], keys[:, :, :end], values[:, :, :end], None, 0.088
        )
        assert torch.equal(alone[:, 0], got[:, row]), f"row {row}"


@pytest.mark.parametrize("isa", ISAS, indirect=True)
@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_the_loader_fuses_where_specbench_kernel_runs_and_logits_stay_transformers(
    tiny_hf: dict, arch: str, isa: str
) -> None:
    """Fused layers where the linear layers run specbench's kernel; none on oneDNN, in
    float32 or unpacked. The fused model's logits equal the unfused one's to bf16 rounding."""
    from specbench.models.hf.fused_layers import FusedGatedMLP, FusedRMSNorm, FusedSelfAttention
    from specbench.models.hf.loading import load_hf_model
    from specbench.models.specs import HFModelSpec

    folder = str(tiny_hf[arch]["target"])

    def load(**extra):  # type: ignore[no-untyped-def]
        spec = HFModelSpec(model=folder, device="cpu", batch_invariant=True, **extra)
        return load_hf_model(spec, folder, "t")

    fused = load(dtype="bfloat16")
    layers = fused.model.model.layers
    assert fused.info["fused_layers"] == len(layers) > 0
    assert all(isinstance(layer.mlp, FusedGatedMLP) for layer in layers)
    assert all(isinstance(layer.self_attn, FusedSelfAttention) for layer in layers)
    assert isinstance(fused.model.model.norm, FusedRMSNorm)
    for other in (
        load(dtype="bfloat16", linear_kernel="onednn"),
        load(dtype="bfloat16", prepack=False),
        load(dtype="float32"),
    ):
        assert other.info["fused_layers"] == 0
        fused_kinds = FusedRMSNorm | FusedGatedMLP | FusedSelfAttention
        assert not any(isinstance(m, fused_kinds) for m in other.model.modules())
    plain = load(dtype="bfloat16", prepack=False)
    tokens = tiny_hf["tokenizer"].encode("the quick brown fox jumps over the lazy dog")
    with torch.inference_mode():
        got = fused.new_session().logits_from(tokens, 0)
        expected = plain.new_session().logits_from(tokens, 0)
    assert torch.allclose(got, expected, atol=0.1, rtol=0.05)
    assert (got.argmax(-1) == expected.argmax(-1)).float().mean() > 0.9


@needs_kernel
def test_transformers_as_shipped_runs_its_own_norms_and_mlps(tiny_hf: dict) -> None:
    """``kernels = "transformers"`` (``shipped_kernels``) must time transformers' own
    modules: inside it no fused class is left, after it the fused ones are back."""
    from specbench.models.hf.fused_layers import FusedGatedMLP, FusedRMSNorm, FusedSelfAttention
    from specbench.models.hf.loading import load_hf_model
    from specbench.models.specs import HFModelSpec

    folder = str(tiny_hf["qwen2"]["target"])
    spec = HFModelSpec(model=folder, dtype="bfloat16", device="cpu", batch_invariant=True)
    model = load_hf_model(spec, folder, "t")

    def fused_modules() -> int:
        kinds = FusedRMSNorm | FusedGatedMLP | FusedSelfAttention
        return sum(isinstance(m, kinds) for m in model.model.modules())

    before = fused_modules()
    assert before > 0
    with model.shipped_kernels():
        assert fused_modules() == 0
        names = {type(m).__name__ for m in model.model.modules()}
        assert {"Qwen2RMSNorm", "Qwen2MLP", "Qwen2Attention", "Linear"} <= names
    assert fused_modules() == before


@pytest.mark.parametrize("isa", ISAS, indirect=True)
def test_a_draft_is_packed_for_few_rows_and_computes_what_a_target_does(
    tiny_hf: dict, isa: str
) -> None:
    """The backend loads a draft (one- or two-row steps) in the kernel's layout for few rows
    and a target in the one for several, fused projections included, and says which in the
    model's info; the two compute the same logits bit for bit at every rows per call (a
    self-speculation pair stays exact)."""
    from specbench.models import bf16_kernels
    from specbench.models.builtin_backends import HFBackend
    from specbench.models.specs import HFModelSpec

    folder = str(tiny_hf["qwen2"]["target"])
    spec = HFModelSpec(model=folder, dtype="bfloat16", device="cpu", batch_invariant=True)
    draft, target = HFBackend().load(spec, "draft"), HFBackend().load(spec, "target")
    few = isa == "avx2"
    assert draft.info["linear_kernel_layout"] == ("few rows" if few else "any rows")
    assert target.info["linear_kernel_layout"] == ("several rows" if few else "any rows")
    for layer in draft.model.model.layers:  # type: ignore[attr-defined]
        for packed in (layer.self_attn.qkv, layer.mlp.gate_up, layer.mlp.down_proj.packed_weight):
            assert bf16_kernels.packed_for_few_rows(packed.data) == few
    tokens = tiny_hf["tokenizer"].encode("the quick brown fox jumps over the lazy dog again")
    ends = [4, 5, 7, 11, len(tokens)]  # a prefill, then calls of 1, 2, 4 and several rows
    assert ends[-1] > 11
    logits: dict[str, list[torch.Tensor]] = {"draft": [], "target": []}
    with torch.inference_mode():
        for role, model in (("draft", draft), ("target", target)):
            session, done = model.new_session(), 0
            for end in ends:
                logits[role].append(session.logits_from(tokens[:end], done))
                done = end
    assert all(torch.equal(a, b) for a, b in zip(logits["draft"], logits["target"], strict=True))
    # linear_layout overrides the role's choice either way.
    for layout, role, chosen in (("several-rows", "draft", False), ("few-rows", "target", True)):
        model = HFBackend().load(spec.model_copy(update={"linear_layout": layout}), role)
        qkv = model.model.model.layers[0].self_attn.qkv  # type: ignore[attr-defined]
        assert bf16_kernels.packed_for_few_rows(qkv.data) == (chosen and few)
