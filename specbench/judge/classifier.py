"""The judge: a classifier of mismatch importance on standardised hidden-state features.

Logistic regression with an L2 penalty (sklearn's ``C`` convention: loss = C * sum(BCE) +
||w||^2 / 2), fitted by L-BFGS in float64 from zeros, so a seed fully determines it. ``C``
is chosen by validation ROC-AUC, then the model is refitted on all data. With prompts
(groups) the validation is K-fold over whole prompts: every mismatch is scored once by a
model that never saw its prompt, and the ROC-AUC is taken over all those scores, so a few
hundred mismatches give a usable estimate (a single 20% split of 50 positives does not); a
bootstrap over prompts gives its 95% interval. Given named column sets (e.g. "tokens" or
"target+confidence") the validation chooses the set together with C, inside each fold as
well, so the best of several sets is not flattered either; the judge then reads only its
set's columns of the full feature row. An MLP (one hidden layer) is available with
``kind = "mlp"``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import torch

Kind = Literal["logistic", "mlp"]
#: Down to 1e-5: hidden states have thousands of dimensions and a judge sees hundreds to a few
#: thousand mismatches, so strong regularisation is where the best C is expected.
C_GRID = (1e-5, 1e-4, 1e-3, 1e-2, 0.1, 1.0, 10.0)


@dataclass
class JudgeClassifier:
    """Scores features: the probability that a mismatch is important (changes the answer)."""

    kind: Kind
    mean: torch.Tensor
    std: torch.Tensor
    state: dict[str, torch.Tensor]
    #: The columns of the full feature row it reads (a chosen column set); ``None``: all.
    columns: torch.Tensor | None = None

    def prob_important(self, features: torch.Tensor) -> torch.Tensor:
        """``features`` ``[..., H]`` to probabilities ``[...]``, float64 on the CPU: in float32
        a confident judge's probabilities round to 1.0, and ties distort both the ROC-AUC and
        a threshold sweep near 1."""
        x = features.double().cpu()
        if self.columns is not None:
            x = x[..., self.columns]
        x = (x - self.mean) / self.std
        return torch.sigmoid(_logits(self.kind, self.state, x))

    def to_dict(self) -> dict[str, Any]:
        saved = {"kind": self.kind, "mean": self.mean, "std": self.std, "state": self.state}
        return saved if self.columns is None else saved | {"columns": self.columns}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> JudgeClassifier:
        return cls(
            kind=data["kind"],
            mean=data["mean"],
            std=data["std"],
            state=data["state"],
            columns=data.get("columns"),  # judges saved before column sets read every column
        )


@dataclass
class TrainReport:
    """How training went; the numbers records and ``judge cache show`` carry."""

    samples: int
    important: int
    unimportant: int
    validation_samples: int
    roc_auc: float | None
    train_loss: float
    chosen_c: float
    grid: dict[str, float | None] = field(default_factory=dict)
    #: How the ROC-AUC was measured, e.g. "5-fold by prompt" or "held-out rows".
    validation: str = "held-out split"
    #: 95% bootstrap interval of the chosen C's ROC-AUC (resampling prompts), when measured.
    roc_auc_interval: tuple[float, float] | None = None
    #: For choosing a threshold: at each threshold, the share of held-out unimportant and of
    #: important mismatches the judge would keep (score below it), from the nested scores.
    operating_points: list[dict[str, float]] = field(default_factory=list)
    #: The column set chosen with C, when several were offered.
    chosen_features: str | None = None


@dataclass(frozen=True, eq=False)
class _Choice:
    """What validation chooses: a C and, when sets are offered, a named column set."""

    c: float
    name: str | None = None
    columns: torch.Tensor | None = None

    @property
    def label(self) -> str:
        return f"{self.c:g}" if self.name is None else f"{self.name}, C={self.c:g}"


def roc_auc(scores: torch.Tensor, labels: torch.Tensor) -> float | None:
    """Area under the ROC curve (Mann-Whitney, ties counted half); ``None`` if one class."""
    positives = int(labels.sum())
    negatives = len(labels) - positives
    if positives == 0 or negatives == 0:
        return None
    order = torch.argsort(scores.double())
    ranks = torch.empty(len(scores), dtype=torch.float64)
    sorted_scores = scores.double()[order]
    i = 0
    while i < len(order):  # average ranks over ties
        j = i
        while j + 1 < len(order) and sorted_scores[j + 1] == sorted_scores[i]:
            j += 1
        ranks[order[i : j + 1]] = (i + j) / 2 + 1
        i = j + 1
    rank_sum = float(ranks[labels.bool()].sum())
    return (rank_sum - positives * (positives + 1) / 2) / (positives * negatives)


def stratified_roc_auc(
    scores: torch.Tensor, labels: torch.Tensor, strata: torch.Tensor
) -> float | None:
    """ROC-AUC over the pairs that share a stratum (a validation fold).

    Scores of different folds come from different models whose base rates differ with what
    each left out; comparing them across folds ranks folds, not mismatches, and pulls the
    pooled AUC of a weak model far below 0.5. This is the per-fold AUC weighted by each
    fold's positive-negative pairs; folds with one class count for nothing."""
    total, weight = 0.0, 0
    for stratum in set(strata.tolist()):
        mask = strata == stratum
        auc = roc_auc(scores[mask], labels[mask])
        if auc is None:
            continue
        positives = int(labels[mask].sum())
        pairs = positives * (int(mask.sum()) - positives)
        total += auc * pairs
        weight += pairs
    return total / weight if weight else None


def train_classifier(
    features: torch.Tensor,
    labels: torch.Tensor,
    kind: Kind = "logistic",
    c_grid: Sequence[float] = C_GRID,
    validation_fraction: float = 0.2,
    seed: int = 0,
    groups: Sequence[str] | None = None,
    folds: int = 5,
    column_sets: Mapping[str, Sequence[int]] | None = None,
) -> tuple[JudgeClassifier, TrainReport]:
    """Choose C (and, given ``column_sets``, which columns to read) by validation ROC-AUC,
    then refit on everything.

    With ``groups`` (each row's prompt) validation holds out whole prompts, so the ROC-AUC
    measures mismatches of prompts the judge has not seen, as decoding meets them. With
    ``folds`` >= 2 and enough prompts it is K-fold, and the reported ROC-AUC is nested: each
    fold's model has its C chosen by an inner K-fold on the other folds alone, so picking
    the best of the grid does not flatter it (``grid`` holds the plain K-fold AUC per C).
    Otherwise one ``validation_fraction`` split both chooses C and reports its AUC."""
    x = features.double()
    y = labels.double()
    if len(y) < 4 or int(y.sum()) in (0, len(y)):
        raise ValueError(
            f"need examples of both classes to train a judge (got {int(y.sum())} important "
            f"of {len(y)})"
        )
    choices = [_Choice(c) for c in c_grid]
    if column_sets:
        choices = [
            _Choice(c, name, torch.tensor(list(columns), dtype=torch.long))
            for name, columns in column_sets.items()
            for c in c_grid
        ]
    names = None if groups is None else list(groups)
    if names is not None and folds >= 2 and len(set(names)) >= folds:
        fold_of = _group_folds(names, folds, seed)
        grid, best = _grid_search(kind, x, y, fold_of, choices, seed)

        def inner_best(train_idx: torch.Tensor) -> _Choice:
            inner_names = [names[i] for i in train_idx.tolist()]
            if len(set(inner_names)) < folds:
                return best
            inner_folds = _group_folds(inner_names, folds, seed)
            return _grid_search(kind, x[train_idx], y[train_idx], inner_folds, choices, seed)[1]

        scores = _out_of_fold_scores(kind, x, y, fold_of, inner_best, seed)
        auc = stratified_roc_auc(scores, y, fold_of)
        interval = _bootstrap_interval(scores, y, fold_of, names, seed)
        points = operating_points(scores, y)
        chosen = "C and columns" if column_sets else "C"
        validation = f"{folds}-fold by prompt, {chosen} chosen inside each fold"
        validation_samples = len(y)
    else:
        if names is not None and len(set(names)) >= 5:
            _, val_idx = _group_split(names, validation_fraction, seed)
            validation = "held-out prompts"
        else:
            _, val_idx = _stratified_split(y, validation_fraction, seed)
            validation = "held-out rows"
        fold_of = torch.full((len(y),), -1, dtype=torch.long)
        fold_of[val_idx] = 0
        grid, best = _grid_search(kind, x, y, fold_of, choices, seed)
        auc, interval, validation_samples = grid.get(best.label), None, len(val_idx)
        points = []
    final = _fit(kind, x, y, best, seed)
    loss = float(torch.nn.functional.binary_cross_entropy(final.prob_important(x), y))
    report = TrainReport(
        samples=len(y),
        important=int(y.sum()),
        unimportant=len(y) - int(y.sum()),
        validation_samples=validation_samples,
        roc_auc=auc,
        train_loss=loss,
        chosen_c=best.c,
        grid=grid,
        validation=validation,
        roc_auc_interval=interval,
        operating_points=points,
        chosen_features=best.name,
    )
    return final, report


def block_columns(widths: Mapping[str, int], sets: Sequence[str]) -> dict[str, list[int]]:
    """Each '+'-joined set of named blocks as column indices of a row that holds the blocks
    side by side, in the order of ``widths`` (block name to column count)."""
    start, offset = {}, 0
    for block, width in widths.items():
        start[block] = offset
        offset += width
    return {
        name: [c for b in name.split("+") for c in range(start[b], start[b] + widths[b])]
        for name in sets
    }


THRESHOLDS = (0.02, 0.05, 0.1, 0.15, 0.2, 0.3, 0.5, 0.7)


def operating_points(
    scores: torch.Tensor, labels: torch.Tensor, thresholds: Sequence[float] = THRESHOLDS
) -> list[dict[str, float]]:
    """What a threshold keeps: the share of unimportant and important mismatches scored below
    it (a judge is good where the first is high and the second low)."""
    important = labels.bool()
    points = []
    for threshold in thresholds:
        kept = scores < threshold
        points.append(
            {
                "threshold": threshold,
                "kept_unimportant": float(kept[~important].double().mean()),
                "kept_important": float(kept[important].double().mean()),
            }
        )
    return points


def _grid_search(
    kind: Kind,
    x: torch.Tensor,
    y: torch.Tensor,
    fold_of: torch.Tensor,
    choices: Sequence[_Choice],
    seed: int,
) -> tuple[dict[str, float | None], _Choice]:
    """Validation ROC-AUC of every choice (fold ``f`` scored by a model fitted on the rows of
    the other folds; rows in fold -1 are only trained on) and the best one."""
    scored = fold_of >= 0
    grid: dict[str, float | None] = {}
    best, best_auc = choices[0], -1.0
    for choice in choices:
        scores = _out_of_fold_scores(kind, x, y, fold_of, _constant(choice), seed)
        auc = stratified_roc_auc(scores[scored], y[scored], fold_of[scored])
        grid[choice.label] = auc
        if auc is not None and auc > best_auc:
            best, best_auc = choice, auc
    return grid, best


def _out_of_fold_scores(
    kind: Kind,
    x: torch.Tensor,
    y: torch.Tensor,
    fold_of: torch.Tensor,
    choose: Callable[[torch.Tensor], _Choice],
    seed: int,
) -> torch.Tensor:
    """Each row of fold ``f >= 0`` scored by a model fitted on every other row, with the
    choice ``choose`` makes from those training rows' indices; rows of fold -1 stay NaN."""
    scores = torch.full((len(y),), float("nan"), dtype=torch.float64)
    for fold in sorted(f for f in set(fold_of.tolist()) if f >= 0):
        train_idx = torch.nonzero(fold_of != fold).flatten()
        held_idx = torch.nonzero(fold_of == fold).flatten()
        model = _fit(kind, x[train_idx], y[train_idx], choose(train_idx), seed)
        scores[held_idx] = model.prob_important(x[held_idx])
    return scores


def _constant(choice: _Choice) -> Callable[[torch.Tensor], _Choice]:
    return lambda _train_idx: choice


def _stratified_split(
    y: torch.Tensor, fraction: float, seed: int
) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    train, val = [], []
    for value in (0.0, 1.0):
        idx = torch.nonzero(y == value).flatten()
        idx = idx[torch.randperm(len(idx), generator=generator)]
        cut = round(len(idx) * fraction)
        val.append(idx[:cut])
        train.append(idx[cut:])
    return torch.cat(train).sort().values, torch.cat(val).sort().values


def _group_folds(groups: list[str], folds: int, seed: int) -> torch.Tensor:
    """Each row's fold: the prompts, shuffled with ``seed``, dealt round-robin to folds."""
    names = sorted(set(groups))
    order = torch.randperm(len(names), generator=torch.Generator().manual_seed(seed)).tolist()
    fold_of_name = {names[i]: n % folds for n, i in enumerate(order)}
    return torch.tensor([fold_of_name[g] for g in groups], dtype=torch.long)


def _bootstrap_interval(
    scores: torch.Tensor,
    labels: torch.Tensor,
    strata: torch.Tensor,
    groups: list[str],
    seed: int,
    rounds: int = 1000,
) -> tuple[float, float] | None:
    """95% percentile interval of the ROC-AUC, resampling whole prompts with replacement."""
    names = sorted(set(groups))
    rows_of: dict[str, list[int]] = {name: [] for name in names}
    for i, g in enumerate(groups):
        rows_of[g].append(i)
    generator = torch.Generator().manual_seed(seed)
    values = []
    for _ in range(rounds):
        picks = torch.randint(len(names), (len(names),), generator=generator).tolist()
        rows = torch.tensor([r for p in picks for r in rows_of[names[p]]], dtype=torch.long)
        auc = stratified_roc_auc(scores[rows], labels[rows], strata[rows])
        if auc is not None:
            values.append(auc)
    if len(values) < rounds // 2:
        return None
    ordered = sorted(values)
    return ordered[int(0.025 * len(ordered))], ordered[int(0.975 * len(ordered)) - 1]


def _group_split(
    groups: list[str], fraction: float, seed: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Hold out ``fraction`` of the groups (prompts), chosen at random with ``seed``."""
    names = sorted(set(groups))
    generator = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(names), generator=generator).tolist()
    held = {names[i] for i in order[: max(1, round(len(names) * fraction))]}
    val = [i for i, g in enumerate(groups) if g in held]
    train = [i for i, g in enumerate(groups) if g not in held]
    return torch.tensor(train, dtype=torch.long), torch.tensor(val, dtype=torch.long)


def _fit(
    kind: Kind, x: torch.Tensor, y: torch.Tensor, choice: _Choice, seed: int
) -> JudgeClassifier:
    if choice.columns is not None:
        x = x[:, choice.columns]
    mean = x.mean(0)
    std = x.std(0).clamp(min=1e-6)
    z = (x - mean) / std
    torch.manual_seed(seed)
    state = _init_state(kind, z.shape[1])
    params = list(state.values())
    for p in params:
        p.requires_grad_(True)
    penalty = 1.0 / (2.0 * choice.c)

    def objective() -> torch.Tensor:
        logits = _logits(kind, state, z)
        bce = torch.nn.functional.binary_cross_entropy_with_logits(logits, y, reduction="sum")
        weights = [v for name, v in state.items() if name.startswith("w")]
        return (bce + penalty * sum((w**2).sum() for w in weights)) / len(y)

    optimizer = torch.optim.LBFGS(
        params, lr=1.0, max_iter=300, tolerance_grad=1e-9, line_search_fn="strong_wolfe"
    )

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = objective()
        loss.backward()  # type: ignore[no-untyped-call]
        return loss

    optimizer.step(closure)  # type: ignore[no-untyped-call]
    frozen = {name: value.detach().clone() for name, value in state.items()}
    return JudgeClassifier(kind=kind, mean=mean, std=std, state=frozen, columns=choice.columns)


def _init_state(kind: Kind, dim: int) -> dict[str, torch.Tensor]:
    if kind == "logistic":
        return {
            "w": torch.zeros(dim, dtype=torch.float64),
            "b": torch.zeros((), dtype=torch.float64),
        }
    hidden = 64
    generator = torch.Generator().manual_seed(0)
    return {
        "w1": torch.randn(dim, hidden, generator=generator, dtype=torch.float64) / dim**0.5,
        "b1": torch.zeros(hidden, dtype=torch.float64),
        "w2": torch.randn(hidden, generator=generator, dtype=torch.float64) / hidden**0.5,
        "b2": torch.zeros((), dtype=torch.float64),
    }


def _logits(kind: Kind, state: dict[str, torch.Tensor], z: torch.Tensor) -> torch.Tensor:
    if kind == "logistic":
        return z @ state["w"] + state["b"]
    hidden = torch.relu(z @ state["w1"] + state["b1"])
    return hidden @ state["w2"] + state["b2"]
