"""The one logits-processing path."""

from __future__ import annotations

import pytest
import torch

from specbench.decoding.sampling import SamplingParams, logits_to_probs, sample


def test_temperature_zero_is_one_hot_argmax() -> None:
    probs = logits_to_probs(torch.tensor([[0.1, 2.0, -1.0], [3.0, 0.0, 2.9]]), SamplingParams())
    assert probs.tolist() == [[0.0, 1.0, 0.0], [1.0, 0.0, 0.0]]


def test_temperature_scales_logits() -> None:
    logits = torch.tensor([1.0, 2.0, 3.0])
    probs = logits_to_probs(logits, SamplingParams(temperature=0.5))
    assert torch.allclose(probs, torch.softmax(logits / 0.5, -1))


def test_top_k_keeps_k_most_likely() -> None:
    logits = torch.tensor([1.0, 4.0, 3.0, 2.0])
    probs = logits_to_probs(logits, SamplingParams(temperature=1.0, top_k=2))
    assert probs[0] == 0 and probs[3] == 0
    assert torch.allclose(probs[1:3], torch.softmax(torch.tensor([4.0, 3.0]), -1))


def test_top_p_keeps_smallest_set_reaching_p() -> None:
    probs_in = torch.tensor([0.5, 0.3, 0.15, 0.05])
    logits = probs_in.log()
    out = logits_to_probs(logits, SamplingParams(temperature=1.0, top_p=0.8))
    # 0.5 alone < 0.8; 0.5 + 0.3 reaches 0.8: keep the first two, renormalised.
    assert torch.allclose(out, torch.tensor([0.625, 0.375, 0.0, 0.0]))
    out = logits_to_probs(logits, SamplingParams(temperature=1.0, top_p=0.81))
    assert out[2] > 0 and out[3] == 0


def test_top_p_always_keeps_the_top_token() -> None:
    out = logits_to_probs(
        torch.tensor([5.0, 0.0, 0.0]), SamplingParams(temperature=1.0, top_p=0.01)
    )
    assert out.tolist() == [1.0, 0.0, 0.0]


def test_transforms_apply_in_order_temperature_top_k_top_p() -> None:
    logits = torch.tensor([3.0, 2.0, 1.0, 0.0])
    params = SamplingParams(temperature=2.0, top_k=3, top_p=0.7)
    scaled = torch.softmax(torch.tensor([3.0, 2.0, 1.0]) / 2.0, -1)  # top-k after temperature
    keep = 2 if scaled[0] < 0.7 <= scaled[:2].sum() else 1
    expected = torch.zeros(4)
    expected[:keep] = torch.softmax(torch.tensor([3.0, 2.0, 1.0][:keep]) / 2.0, -1)
    assert torch.allclose(logits_to_probs(logits, params), expected)


def test_batched_rows_are_processed_independently() -> None:
    logits = torch.randn(3, 5, 7, generator=torch.Generator().manual_seed(0))
    params = SamplingParams(temperature=0.8, top_k=5, top_p=0.9)
    batched = logits_to_probs(logits, params)
    for i in range(3):
        for j in range(5):
            assert torch.allclose(batched[i, j], logits_to_probs(logits[i, j], params))


@pytest.mark.parametrize(
    "bad", [dict(temperature=-1.0), dict(top_k=0), dict(top_p=0.0), dict(top_p=1.5)]
)
def test_invalid_params_are_refused(bad: dict) -> None:
    with pytest.raises(ValueError):
        SamplingParams(**bad)


def test_sample_shape_and_determinism() -> None:
    probs = torch.softmax(torch.randn(4, 9), -1)
    a = sample(probs, torch.Generator().manual_seed(1))
    b = sample(probs, torch.Generator().manual_seed(1))
    assert a.shape == (4,) and torch.equal(a, b)
