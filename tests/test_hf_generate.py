"""transformers' own generate and assisted generation as a reference method."""

from __future__ import annotations

from typing import Any

import pytest
from helpers import hf_pair, make_method, request


@pytest.fixture(scope="module")
def pair(tiny_hf: dict[str, Any]) -> Any:
    return hf_pair(tiny_hf)


PROMPTS = [[5, 9, 23, 7], [40, 41, 42, 43, 44, 45], [100, 3, 17]]


def test_hf_generate_greedy_equals_specbench_baseline_token_for_token(pair: Any) -> None:
    baseline = make_method("baseline", pair)
    plain = make_method("hf-generate", pair)
    assisted = make_method("hf-generate", pair, assisted=True, num_assistant_tokens=3)
    for prompt in PROMPTS:
        ours = baseline.generate(request(prompt, 20)).tokens
        assert plain.generate(request(prompt, 20)).tokens == ours
        result = assisted.generate(request(prompt, 20))
        assert result.tokens == ours
        stats = result.stats
        assert stats.draft_calls > 0 and stats.target_calls < len(result.tokens) + 1
        assert stats.accepted == len(result.tokens) - stats.target_calls


def test_hf_generate_counts_one_target_call_per_token_and_stops_at_eos(pair: Any) -> None:
    plain = make_method("hf-generate", pair)
    result = plain.generate(request(PROMPTS[0], 12))
    assert result.stats.target_calls == len(result.tokens) == 12
    stop = frozenset({result.tokens[4]})
    stopped = plain.generate(request(PROMPTS[0], 12, stop=stop))
    assert (
        stopped.stop_reason == "eos"
        and stopped.tokens == result.tokens[: result.tokens.index(result.tokens[4]) + 1]
    )
    info = plain.engine_info()
    assert info is not None and info["name"] == "transformers"
    assisted = make_method("hf-generate", pair, assisted=True, num_assistant_tokens=3)
    assert assisted.own_baseline() == plain.params


def test_transformers_kernels_run_transformers_own_layers_and_give_ours_back(
    tiny_hf: dict[str, Any],
) -> None:
    """``kernels = "transformers"`` times transformers as shipped: inside generate the target
    and the draft run plain ``nn.Linear`` layers and transformers' default attention; after
    it, specbench's packed, row-stable layers and attention are back."""
    import torch

    from specbench.models.hf.numerics import ROW_STABLE_ATTENTION

    models = hf_pair(tiny_hf, batch_invariant=True)
    target = models.target.model  # type: ignore[attr-defined]
    draft = models.require_draft().model  # type: ignore[attr-defined]

    def kinds(module: Any) -> set[str]:
        return {type(m).__name__ for m in module.modules() if isinstance(m, torch.nn.Linear)}

    ours = {"target": kinds(target), "draft": kinds(draft)}
    assert ours["draft"] - {"Linear"} and draft.config._attn_implementation == ROW_STABLE_ATTENTION
    seen: dict[str, tuple[set[str], str]] = {}

    def watch(role: str, module: Any) -> None:
        def record(*_: Any) -> None:
            seen.setdefault(role, (kinds(module), module.config._attn_implementation))

        module.register_forward_pre_hook(record)

    watch("target", target)
    watch("draft", draft)
    shipped = make_method(
        "hf-generate", models, assisted=True, num_assistant_tokens=3, kernels="transformers"
    )
    result = shipped.generate(request(PROMPTS[0], 12))
    assert len(result.tokens) == 12
    assert seen == {"target": ({"Linear"}, "sdpa"), "draft": ({"Linear"}, "sdpa")}
    assert {"target": kinds(target), "draft": kinds(draft)} == ours
    assert draft.config._attn_implementation == ROW_STABLE_ATTENTION
    assert (
        shipped.own_baseline() == make_method("hf-generate", models, kernels="transformers").params
    )
