"""The example plugin's own tests: copy this file with the plugin.

They use only ``specbench.api`` and ``specbench.testing``: the installed method is built by
name as the runner builds it, on toy models whose distributions are known.
"""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from specbench.api import RejectionVerifier, discover_methods
from specbench.testing import make_method, request, toy_models

NAME = "adaptive-speculative"


def test_the_method_is_registered_under_its_name() -> None:
    info = discover_methods().get(NAME)
    assert info.package == "specbench-adaptive-k"
    assert info.needs_text == "target+draft"


def test_parameters_are_validated() -> None:
    with pytest.raises(ValidationError, match="need min_k <= start_k <= max_k"):
        make_method(NAME, toy_models(), start_k=9, max_k=6)


def test_greedy_output_equals_the_baseline_token_for_token() -> None:
    """An exact method at temperature 0 reproduces greedy decoding exactly."""
    models = toy_models(vocab_size=32, order=2, seed=5, distance=1.0)
    baseline = make_method("baseline", models)
    adaptive = make_method(NAME, models, start_k=2, min_k=1, max_k=10)
    assert isinstance(adaptive.verifier, RejectionVerifier)
    for prompt in ([2], [5, 6, 7]):
        want = baseline.generate(request(prompt, 100)).tokens
        assert adaptive.generate(request(prompt, 100)).tokens == want


def test_k_climbs_when_every_draft_is_accepted() -> None:
    perfect = toy_models(vocab_size=16, distance=0.0)  # the draft is the target
    method = make_method(NAME, perfect, start_k=2, min_k=1, max_k=9)
    result = method.generate(request([2], 60))
    assert result.stats.extra["final_k"] == 9
    assert 2 <= result.stats.extra["mean_k"] <= 9
