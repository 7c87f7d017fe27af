"""The judge classifier: ROC-AUC, deterministic training, C chosen on held-out data."""

from __future__ import annotations

import itertools

import pytest
import torch

from specbench.judge.classifier import JudgeClassifier, roc_auc, train_classifier


def _brute_force_auc(scores: list[float], labels: list[int]) -> float:
    pairs = [
        (p, n)
        for p, n in itertools.product(range(len(scores)), repeat=2)
        if labels[p] == 1 and labels[n] == 0
    ]
    wins = sum(
        1.0 if scores[p] > scores[n] else 0.5 if scores[p] == scores[n] else 0.0 for p, n in pairs
    )
    return wins / len(pairs)


def test_roc_auc_matches_pairwise_definition_with_ties() -> None:
    generator = torch.Generator().manual_seed(0)
    scores = torch.randint(0, 6, (60,), generator=generator).float()  # many ties
    labels = torch.randint(0, 2, (60,), generator=generator)
    assert roc_auc(scores, labels) == pytest.approx(
        _brute_force_auc(scores.tolist(), labels.tolist())
    )
    assert roc_auc(scores, torch.zeros(60, dtype=torch.long)) is None


def _dataset(n: int = 400, dim: int = 12, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(n, dim, generator=generator) * torch.linspace(0.5, 5.0, dim)
    direction = torch.randn(dim, generator=generator)
    noise = 0.5 * torch.randn(n, generator=generator)
    y = ((x / x.std(0)) @ direction + noise > 0.3).long()
    return x, y


@pytest.mark.parametrize("kind", ["logistic", "mlp"])
def test_training_learns_and_is_deterministic(kind: str) -> None:
    x, y = _dataset()
    model, report = train_classifier(x, y, kind=kind, seed=3)
    again, _ = train_classifier(x, y, kind=kind, seed=3)
    assert report.roc_auc is not None and report.roc_auc > 0.9
    assert report.samples == 400 and report.important == int(y.sum())
    assert report.validation_samples == pytest.approx(80, abs=2)
    for name, value in model.state.items():
        assert torch.equal(value, again.state[name])
    restored = JudgeClassifier.from_dict(model.to_dict())
    assert torch.equal(restored.prob_important(x), model.prob_important(x))


def test_regularisation_is_chosen_by_validation_auc() -> None:
    x, y = _dataset(n=120, dim=40, seed=1)
    _, report = train_classifier(x, y, c_grid=[1e-4, 1e-2, 1.0, 100.0])
    best = max((v, c) for c, v in report.grid.items() if v is not None)
    assert report.chosen_c == float(best[1])
    assert report.roc_auc == best[0]


def test_one_class_is_refused() -> None:
    with pytest.raises(ValueError, match="both classes"):
        train_classifier(torch.randn(10, 3), torch.zeros(10, dtype=torch.long))


def test_group_split_holds_out_whole_prompts() -> None:
    torch.manual_seed(0)
    groups = [f"p{i // 7}" for i in range(140)]  # 20 prompts, 7 mismatches each
    features = torch.randn(140, 6)
    labels = (features[:, 0] > 0).long()
    _, report = train_classifier(features, labels, groups=groups, c_grid=(1e-5, 1.0))
    assert report.validation_samples == 4 * 7  # 20% of the prompts, all their rows
    from specbench.judge.classifier import _group_split

    train, val = _group_split(groups, 0.2, 0)
    assert {groups[i] for i in train.tolist()}.isdisjoint({groups[i] for i in val.tolist()})
    assert set(report.grid) == {"1e-05", "1"}
