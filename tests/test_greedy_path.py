"""The greedy path (argmax comparisons, no distributions) decides exactly as the general path.

Every exact method, chains and trees, eager, static and batched, decodes the same requests
with the shortcut on and off on tiny Hugging Face models and must give the same tokens and
the same acceptance counts; a deliberately wrong shortcut must be caught by the same check.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch
from helpers import hf_pair, make_method, request

from specbench.decoding import greedy
from specbench.decoding.verify import Verdict, leading_accepts
from specbench.plugins import MethodModels

PROMPTS = [[5, 9, 23, 7, 5, 9, 23], [40, 41, 42, 43, 40, 41, 42], [100, 3, 17, 3, 17, 3]]

METHODS: dict[str, dict[str, Any]] = {
    "baseline": {},
    "speculative": {"k": 3},
    "specexec": {"budget": 8, "max_depth": 4},
    "prompt-lookup": {"k": 3},
    "suffix": {},
    "lookahead": {},
    "token-recycling": {},
}
STATIC: dict[str, dict[str, Any]] = {
    "baseline": {"engine": "static", "static_max_len": 128},
    "speculative": {"k": 3, "engine": "static", "static_max_len": 128},
}
BATCHED: dict[str, dict[str, Any]] = {
    "baseline": {"batch_size": 2},
    "speculative": {"k": 3, "batch_size": 2},
}


@pytest.fixture(scope="module")
def pairs(tiny_hf: dict[str, Any]) -> dict[str, MethodModels]:
    pair = hf_pair(tiny_hf)
    # The target drafting for itself accepts nearly everything: the accept and bonus paths.
    itself = MethodModels(target=pair.target, draft=pair.target)
    return {"pair": pair, "self": itself}


def _decode(models: MethodModels, name: str, params: dict[str, Any], batched: bool) -> list[Any]:
    method = make_method(name, models, **params)
    requests = [request(prompt, 16) for prompt in PROMPTS]
    if batched:
        results = method.generate_batch(requests[:2]) + method.generate_batch(requests[2:])
    else:
        results = [method.generate(r) for r in requests]
    return [(r.tokens, r.stats.accepted, r.stats.proposed, r.stats.steps) for r in results]


def _mismatches(pairs: dict[str, MethodModels], monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every configuration whose shortcut result differs from the general path's."""
    wrong = []
    for kind, models in pairs.items():
        for table, batched in ((METHODS, False), (STATIC, False), (BATCHED, True)):
            for name, params in table.items():
                monkeypatch.setattr(greedy, "ENABLED", True)
                fast = _decode(models, name, params, batched)
                monkeypatch.setattr(greedy, "ENABLED", False)
                general = _decode(models, name, params, batched)
                monkeypatch.setattr(greedy, "ENABLED", True)
                if fast != general:
                    wrong.append(f"{name} {params} on {kind}")
    return wrong


def test_the_greedy_path_equals_the_general_path_token_for_token(
    pairs: dict[str, MethodModels], monkeypatch: pytest.MonkeyPatch
) -> None:
    with torch.inference_mode():
        assert _mismatches(pairs, monkeypatch) == []


def _draft_argmax_verdict(draft_tokens: torch.Tensor, target_logits: torch.Tensor) -> Verdict:
    """A plausible wrong shortcut: accept a draft when it is *the draft's own* argmax (always,
    for a greedy draft), i.e. never look at the target's choice for the drafts."""
    batch, k = draft_tokens.shape
    accepted = leading_accepts(torch.ones(batch, k, dtype=torch.bool))
    choice = target_logits.argmax(dim=-1)
    rows = torch.arange(batch)
    return Verdict(accepted, choice[rows, accepted], torch.ones(batch, k))


def test_a_wrong_greedy_shortcut_is_caught(
    pairs: dict[str, MethodModels], monkeypatch: pytest.MonkeyPatch
) -> None:
    import specbench.decoding.core as core

    monkeypatch.setattr(core, "greedy_verdict", _draft_argmax_verdict)
    with torch.inference_mode():
        wrong = _mismatches({"pair": pairs["pair"]}, monkeypatch)
    assert any(w.startswith("speculative") for w in wrong), wrong


def test_a_verifier_that_decides_differently_is_never_skipped_at_temperature_zero() -> None:
    from broken_methods import AcceptEverything

    from specbench.decoding.sampling import SamplingParams
    from specbench.decoding.verify import RejectionVerifier

    greedy_sampling = SamplingParams(temperature=0.0)
    assert greedy.greedy_applies(greedy_sampling, RejectionVerifier())
    # It overrides verify without promising the argmax verdict: the loops must call it.
    assert not greedy.greedy_applies(greedy_sampling, AcceptEverything())
    assert not greedy.greedy_applies(SamplingParams(temperature=0.8), RejectionVerifier())
