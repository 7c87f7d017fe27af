"""The judge classifier: ROC-AUC, deterministic training, C chosen on held-out data, nested
K-fold validation over prompts; the token features it can add."""

from __future__ import annotations

import itertools

import pytest
import torch

from specbench.judge.classifier import (
    JudgeClassifier,
    roc_auc,
    stratified_roc_auc,
    train_classifier,
)
from specbench.judge.token_features import FEATURE_NAMES, TokenFeaturizer


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
    _, report = train_classifier(features, labels, groups=groups, c_grid=(1e-5, 1.0), folds=0)
    assert report.validation == "held-out prompts"
    assert report.validation_samples == 4 * 7  # 20% of the prompts, all their rows
    from specbench.judge.classifier import _group_split

    train, val = _group_split(groups, 0.2, 0)
    assert {groups[i] for i in train.tolist()}.isdisjoint({groups[i] for i in val.tolist()})
    assert set(report.grid) == {"1e-05", "1"}


def test_stratified_auc_compares_rows_within_a_fold_only() -> None:
    # Each fold ranks perfectly, but fold 1's scores all sit below fold 0's: pooled, its
    # positives lose to fold 0's negatives.
    scores = torch.tensor([0.9, 0.8, 0.7, 0.3, 0.2, 0.1])
    labels = torch.tensor([1, 0, 0, 1, 1, 0])
    folds = torch.tensor([0, 0, 0, 1, 1, 1])
    assert roc_auc(scores, labels) == pytest.approx(5 / 9)
    assert stratified_roc_auc(scores, labels, folds) == 1.0
    one_class = torch.tensor([0, 0, 0, 1, 1, 1])
    assert stratified_roc_auc(scores, torch.tensor([0, 0, 0, 1, 0, 0]), one_class) == 1.0
    assert stratified_roc_auc(scores, torch.zeros(6, dtype=torch.long), folds) is None


def _grouped(n_prompts: int, per_prompt: int, signal: float, seed: int) -> tuple:
    generator = torch.Generator().manual_seed(seed)
    groups = [f"p{i // per_prompt}" for i in range(n_prompts * per_prompt)]
    x = torch.randn(len(groups), 30, generator=generator)
    noise = torch.randn(len(groups), generator=generator)
    y = (signal * x[:, 0] + noise > 1.0).long()
    return x, y, groups


def test_kfold_validation_scores_every_row_with_c_chosen_inside_each_fold() -> None:
    x, y, groups = _grouped(40, 6, signal=3.0, seed=0)
    _, report = train_classifier(x, y, groups=groups, c_grid=(1e-3, 1.0), folds=5)
    assert report.validation == "5-fold by prompt, C chosen inside each fold"
    assert report.validation_samples == len(y)
    assert report.roc_auc is not None and report.roc_auc > 0.85
    assert report.roc_auc_interval is not None
    low, high = report.roc_auc_interval
    assert low < report.roc_auc < high and high - low < 0.2
    points = report.operating_points
    assert [p["threshold"] for p in points] == sorted(p["threshold"] for p in points)
    for name in ("kept_unimportant", "kept_important"):
        assert [p[name] for p in points] == sorted(p[name] for p in points)
    middle = next(p for p in points if p["threshold"] == 0.5)
    assert middle["kept_unimportant"] > 0.8 > 0.3 > middle["kept_important"]


def test_nested_validation_is_not_flattered_by_picking_the_best_c() -> None:
    """Without signal, the best of a grid scores above chance on the data that chose it;
    the nested estimate stays at chance (its 95% interval holds 0.5)."""
    x, y, groups = _grouped(30, 5, signal=0.0, seed=4)
    grid = (1e-5, 1e-4, 1e-3, 1e-2, 0.1, 1.0, 10.0)
    _, report = train_classifier(x, y, groups=groups, c_grid=grid, folds=5)
    best_of_grid = max(v for v in report.grid.values() if v is not None)
    assert report.roc_auc is not None and report.roc_auc < best_of_grid
    assert report.roc_auc_interval is not None
    assert report.roc_auc_interval[0] < 0.5 < report.roc_auc_interval[1]


def test_column_sets_are_chosen_with_c_inside_each_fold() -> None:
    """Offered named column sets, validation picks the one that carries the signal; the
    judge then reads only those columns of a full row; the nested estimate of picking the
    best set is not flattered by the pick."""
    x, y, groups = _grouped(40, 6, signal=3.0, seed=0)  # the label reads column 0 only
    sets = {"signal": [0, 1], "noise": list(range(2, 30)), "all": list(range(30))}
    model, report = train_classifier(
        x, y, groups=groups, c_grid=(1e-3, 1.0), folds=5, column_sets=sets
    )
    assert report.chosen_features == "signal"
    assert report.validation == "5-fold by prompt, C and columns chosen inside each fold"
    assert set(report.grid) == {f"{name}, C={c:g}" for name in sets for c in (1e-3, 1.0)}
    assert model.columns is not None and model.columns.tolist() == [0, 1]
    alone, _ = train_classifier(x[:, :2], y, c_grid=(report.chosen_c,), folds=0)
    assert torch.allclose(model.prob_important(x), alone.prob_important(x[:, :2]))
    restored = JudgeClassifier.from_dict(model.to_dict())
    assert torch.equal(restored.prob_important(x), model.prob_important(x))
    assert report.roc_auc is not None and report.roc_auc > 0.85

    # Without signal, the best of many sets looks above chance on the data that chose it;
    # choosing inside each fold keeps the estimate at chance.
    x, y, groups = _grouped(30, 5, signal=0.0, seed=4)
    sets = {f"pair{i}": [2 * i, 2 * i + 1] for i in range(15)}
    _, report = train_classifier(x, y, groups=groups, c_grid=(1.0,), folds=5, column_sets=sets)
    best_of_grid = max(v for v in report.grid.values() if v is not None)
    assert report.roc_auc is not None and report.roc_auc < best_of_grid
    assert report.roc_auc_interval is not None
    assert report.roc_auc_interval[0] < 0.5 < report.roc_auc_interval[1]


def test_judges_saved_before_column_sets_read_every_column() -> None:
    x, y = _dataset()
    model, _ = train_classifier(x, y)
    saved = model.to_dict()
    assert "columns" not in saved  # files written before column sets look the same
    assert JudgeClassifier.from_dict(saved).columns is None


def test_token_features_describe_both_tokens_and_how_they_relate() -> None:
    texts = {1: "3", 2: "1", 3: " the", 4: " The", 5: "\n\n", 6: " +", 7: " total"}
    featurizer = TokenFeaturizer(lambda ids: texts[ids[0]])
    rows = featurizer.features([1, 3, 5, 6], [2, 4, 7, 7], [0, 10, 99, 3])
    named = [dict(zip(FEATURE_NAMES, row.tolist(), strict=True)) for row in rows]
    assert rows.shape == (4, TokenFeaturizer.width)
    digits, case, blank, symbol = named
    assert (
        digits["draft_has_digit"] == digits["target_has_digit"] == digits["both_have_digits"] == 1
    )
    assert digits["log_position"] == 0.0 and case["log_position"] == pytest.approx(2.3979, abs=1e-4)
    assert case["same_when_normalised"] == 1 and case["draft_leading_space"] == 1
    assert case["draft_word"] == case["target_word"] == 1 and case["draft_has_digit"] == 0
    assert blank["draft_blank"] == blank["draft_has_newline"] == 1 and blank["target_blank"] == 0
    assert symbol["draft_math_symbol"] == 1 and symbol["target_math_symbol"] == 0
    assert symbol["same_when_normalised"] == symbol["one_extends_other"] == 0
