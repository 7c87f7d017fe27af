"""batch_invariant: logits of a position do not depend on how many positions a call scores.

Every test runs on each linear path the loader can take (specbench's bf16 kernel, the default
where it runs; oneDNN-packed weights; transformers' own layers), and on whatever kernel path
this CPU takes (AVX-512, AMX or AVX2): the tests record nothing about the CPU, the loader's
own check (``models/invariance.py``) reports the path in the run header. specbench's kernel
is skipped, with the reason, where it cannot run.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch
from helpers import make_method, request
from kernel_paths import PATHS, path_missing

from specbench.models import bf16_kernels
from specbench.models.hf.loading import load_hf_model
from specbench.models.hf.numerics import ROW_STABLE_ATTENTION, RowStableLinear
from specbench.models.invariance import check_batch_invariance
from specbench.models.loading import load_models
from specbench.models.packed import PackedLinear, packing_available
from specbench.models.specs import HFModelSpec, ModelsSpec

pytest.importorskip("transformers")


def _spec(folder, **extra) -> HFModelSpec:
    return HFModelSpec(model=str(folder), dtype="bfloat16", device="cpu", **extra)


_OWN_KERNEL_MISSING = bf16_kernels.unavailable_reason()
#: The kernel's own default path here; its AVX2 path is tested apart where that is another.
_DEFAULT_ISA = None if _OWN_KERNEL_MISSING else bf16_kernels.isa()

#: The linear paths, as the spec fields that choose them (``isa``: the kernel's path).
PREPACK = [
    pytest.param(
        {"prepack": True, "linear_kernel": "specbench"},
        id=f"specbench-kernel-{_DEFAULT_ISA}",
        marks=pytest.mark.skipif(_OWN_KERNEL_MISSING is not None, reason=str(_OWN_KERNEL_MISSING)),
    ),
    pytest.param(
        {"prepack": True, "linear_kernel": "specbench", "isa": "avx2"},
        id="specbench-kernel-avx2-forced",
        marks=pytest.mark.skipif(
            _DEFAULT_ISA in (None, "avx2"), reason="the kernel's default path here is AVX2"
        ),
    ),
    pytest.param({"prepack": True, "linear_kernel": "onednn"}, id="onednn-packed"),
    pytest.param({"prepack": False}, id="torch-linear"),
]


@pytest.fixture
def prepack(request: pytest.FixtureRequest) -> Iterator[dict[str, object]]:
    """The spec fields of one linear path, with the kernel on that path while the test runs
    (a model loaded under a forced AVX2 path runs the fused layers' AVX2 code too)."""
    fields = dict(request.param)
    isa = fields.pop("isa", None)
    if isa is None:
        yield fields
        return
    with bf16_kernels.use_isa(str(isa)):
        yield fields


@pytest.mark.parametrize("prepack", PREPACK, indirect=True)
@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_verification_rows_equal_one_token_decoding_bit_for_bit(
    tiny_hf: dict, arch: str, prepack: dict
) -> None:
    folder = tiny_hf[arch]["target"]
    spec = _spec(folder, batch_invariant=True, **prepack)
    model = load_hf_model(spec, str(folder), "t")
    assert all(type(m) is not torch.nn.Linear for m in model.model.modules())
    packs = prepack["prepack"] and packing_available(model.model.lm_head.weight)
    layer = PackedLinear if packs or prepack.get("linear_kernel") == "specbench" else None
    assert any(isinstance(m, layer or RowStableLinear) for m in model.model.modules())
    if layer is PackedLinear:
        kernel = model.model.lm_head.packed_weight.kernel
        assert kernel == prepack["linear_kernel"]
    assert model.describe()["attn_implementation"] == ROW_STABLE_ATTENTION
    assert model.describe()["batch_invariance"]["holds"]
    tokens = tiny_hf["tokenizer"].encode("the quick brown fox jumps over the lazy dog, def add")
    prefix = len(tokens) - 6
    batched = model.new_session().logits_from(tokens, prefix - 1)
    session = model.new_session()
    singles = torch.stack(
        [session.logits_from(tokens[: i + 1], i)[0] for i in range(prefix - 1, len(tokens))]
    )
    assert torch.equal(batched, singles)


def _one_layer_qwen2(folder, kv_heads: int):  # type: ignore[no-untyped-def]
    """A random one-layer Qwen2 with head size 128, as in the Qwen2.5 models, saved."""
    from hf_fixtures import build_tokenizer, save
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(0)
    config = Qwen2Config(
        vocab_size=300,
        hidden_size=256,
        intermediate_size=256,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=kv_heads,  # 1: two query heads share one (grouped attention)
        max_position_embeddings=2048,
    )
    return save(Qwen2ForCausalLM(config).eval(), build_tokenizer(), folder)


@pytest.mark.parametrize("prepack", PREPACK, indirect=True)
@pytest.mark.parametrize("kv_heads", [1, 2])
def test_attention_past_a_thousand_keys_is_row_stable(
    tmp_path, prepack: dict, kv_heads: int
) -> None:
    """One query row against more than ~1152 keys takes another CPU path in ``weights @
    values`` than several rows do (a greedy flip at position 1040 of a real 1536-token run):
    at head size 128, decoding one token at a time must still equal scoring the positions
    in one call, bit for bit."""
    folder = _one_layer_qwen2(tmp_path / "long", kv_heads)
    spec = _spec(folder, batch_invariant=True, **prepack)
    model = load_hf_model(spec, str(folder), "t")
    tokens = torch.randint(3, 300, (1400,), generator=torch.Generator().manual_seed(1)).tolist()
    start = 1140
    batched = model.new_session().logits_from(tokens, start)
    session = model.new_session()
    session.logits_from(tokens[:start], start - 1)
    singles = torch.stack(
        [session.logits_from(tokens[: i + 1], i)[0] for i in range(start, len(tokens))]
    )
    assert torch.equal(batched, singles)


def test_greedy_speculative_equals_baseline_in_bfloat16(tiny_hf: dict) -> None:
    folders = tiny_hf["qwen2"]
    models = load_models(
        ModelsSpec(
            target=_spec(folders["target"], batch_invariant=True), draft=_spec(folders["draft"])
        )
    )
    baseline = make_method("baseline", models)
    speculative = make_method("speculative", models, k=4)
    for text in ("the quick brown", "def add(a, b):", "question: what is"):
        prompt = tiny_hf["tokenizer"].encode(text)
        assert (
            speculative.generate(request(prompt, 40)).tokens
            == baseline.generate(request(prompt, 40)).tokens
        )


def test_batch_invariant_refuses_other_attention() -> None:
    with pytest.raises(ValueError, match="batch_invariant needs attn_implementation"):
        HFModelSpec(model="x/y", batch_invariant=True, attn_implementation="sdpa")


def test_the_load_time_check_catches_a_model_that_is_not_batch_invariant(tiny_hf: dict) -> None:
    """A layer whose output depends on how many rows share the call (as a kernel path can)
    must be reported: the check compares one call with one-token steps and with chunks."""
    folder = tiny_hf["qwen2"]["target"]
    model = load_hf_model(_spec(folder, batch_invariant=True), str(folder), "t")
    assert check_batch_invariance(model).holds

    def rows_leak(_module, _inputs, output):  # the call's row count nudges every logit
        return output + 1e-2 * output.shape[-2]

    handle = model.model.lm_head.register_forward_hook(rows_leak)
    try:
        found = check_batch_invariance(model)
    finally:
        handle.remove()
    assert not found.holds and found.single == found.rows
    assert "does not hold on this CPU" in (found.warning("target") or "")


#: A token tree as SpecExec grew one on Qwen2.5-Coder (parents; -1 hangs from the sequence):
#: the path 0 -> 2 -> 6 lies in slots with its siblings masked between them.
TREE_PARENTS = [-1, -1, 0, 0, 1, 2, 2, 5]
#: A chain of k + 1 = 5 rows (a speculative verification): each row sees a prefix of the
#: keys, with the later rows' keys masked after it.
CHAIN_PARENTS = [-1, 0, 1, 2, 3]


def _path(node: int, parents: list[int] = TREE_PARENTS) -> list[int]:
    path = []
    while node != -1:
        path.append(node)
        node = parents[node]
    return path[::-1]


def _torch_attention(query, key, value, mask, scaling):  # type: ignore[no-untyped-def]
    from specbench.models.hf.numerics import grouped_attention

    return grouped_attention(query, key, value, mask, scaling)[0]


def _kernel_attention_on(isa: str):  # type: ignore[no-untyped-def]
    def attend(query, key, value, mask, scaling):  # type: ignore[no-untyped-def]
        from specbench.models.hf.fused_layers import fused_attention

        with bf16_kernels.use_isa(isa):
            return fused_attention(query, key, value, mask, scaling)

    return attend


#: The attention implementations a batch-invariant model runs: torch's products (gathered
#: for trees) and specbench's kernel (the default where it runs) on each of its paths.
ATTENTION = [
    pytest.param(_torch_attention, id="torch"),
    *(
        pytest.param(
            _kernel_attention_on(isa),
            id=f"specbench-kernel-{isa}",
            marks=pytest.mark.skipif(bool(reason), reason=str(reason)),
        )
        for isa in PATHS
        for reason in [path_missing(isa)]
    ),
]


@pytest.mark.parametrize("attend", ATTENTION)
@pytest.mark.parametrize("per_group", [1, 6])
@pytest.mark.parametrize("parents", [TREE_PARENTS, CHAIN_PARENTS], ids=["tree", "chain"])
def test_tree_rows_attend_as_the_same_tokens_decoded_in_turn(  # type: ignore[no-untyped-def]
    per_group: int, attend, parents: list[int]
) -> None:
    """A tree node sees its earlier tokens with its siblings masked between them; the
    products' result depended on where a key lies in the reduction, so a node got other
    values than the same token decoded in turn (a greedy SpecExec flip on a bf16 near-tie).
    Every node's output must equal the decoding step's, bit for bit, at every context length
    (on random data the difference is rare: 2 of 416 nodes on an AVX-512 BF16 EPYC, at 6
    query heads per key/value head; real attention is peakier). A chain's rows too: on an
    AVX2 CPU a row's sum over its keys changed when the later rows' masked keys followed
    them (greedy speculative equalled the baseline on 4 of 6 prompts)."""
    generator = torch.Generator().manual_seed(0)
    groups, dim, nodes = 2, 128, len(parents)

    def normal(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=generator).to(torch.bfloat16)

    for prefix in range(40, 400, 7):
        keys = normal(1, groups, prefix + nodes, dim)
        values = normal(1, groups, prefix + nodes, dim)
        query = normal(1, groups * per_group, nodes, dim)
        allowed = torch.zeros(nodes, prefix + nodes, dtype=torch.bool)
        allowed[:, :prefix] = True
        for node in range(nodes):
            allowed[node, [prefix + n for n in _path(node, parents)]] = True
        mask = torch.zeros(1, 1, nodes, prefix + nodes, dtype=torch.bfloat16)
        mask.masked_fill_(~allowed, torch.finfo(torch.bfloat16).min)
        tree = attend(query, keys, values, mask, 0.088)
        for node in range(nodes):
            # The decoding step: earlier tokens in slots 0.., the token itself last, no mask.
            slots = list(range(prefix)) + [prefix + n for n in _path(node, parents)]
            alone = attend(
                query[:, :, node : node + 1], keys[:, :, slots], values[:, :, slots], None, 0.088
            )
            assert torch.equal(tree[:, node], alone[:, 0]), f"context {prefix}, node {node}"


@pytest.mark.parametrize("prepack", PREPACK, indirect=True)
@pytest.mark.parametrize("engine", ["eager", "static"])
def test_tree_scoring_gives_each_node_the_logits_of_decoding_it_in_turn(
    tmp_path, engine: str, prepack: dict
) -> None:
    """The same at the model level, for the target's tree call on both engines (head size
    128 and a few hundred cached tokens, as in the Qwen2.5 models)."""
    folder = _one_layer_qwen2(tmp_path / "tree", kv_heads=1)
    model = load_hf_model(_spec(folder, batch_invariant=True, **prepack), str(folder), "t")
    kernel = model.info["fused_layers"] > 0
    generator = torch.Generator().manual_seed(2)
    sequence = torch.randint(3, 300, (300,), generator=generator).tolist()
    tokens = torch.randint(3, 300, (len(TREE_PARENTS),), generator=generator).tolist()

    def session():  # type: ignore[no-untyped-def]
        if engine == "static":
            return model.new_static_session(len(sequence) + 16, max_len=512)
        return model.new_session()

    import specbench.models.hf.fused_layers as fused
    import specbench.models.hf.numerics as hf

    # The attention that must see the tree: specbench's kernel where the loader fused the
    # layers, else torch's products over the gathered layout.
    holder, name = (fused, "fused_attention") if kernel else (hf, "_gathered_attention")
    seen = []
    original = getattr(holder, name)

    def spy(*args, **kwargs):  # type: ignore[no-untyped-def]
        seen.append(kernel is False or args[3] is not None)  # the kernel got the tree's mask
        return original(*args, **kwargs)

    tree_session = session()
    tree_session.logits_from(sequence[:-1], len(sequence) - 2)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(holder, name, spy)
        tree = tree_session.tree_forward(sequence, TREE_PARENTS, tokens)
    assert seen and all(seen)  # the tree's rows took the path under test
    for node in range(len(TREE_PARENTS)):
        path = [tokens[n] for n in _path(node)]
        step = session()
        step.logits_from(sequence, len(sequence) - 1)
        for depth in range(1, len(path) + 1):
            alone = step.logits_from(sequence + path[:depth], len(sequence) + depth - 1)[-1]
        assert torch.equal(tree[1 + node], alone), f"node {node}"
