"""The judge: a classifier of mismatch importance on standardised hidden-state features.

Logistic regression with an L2 penalty (sklearn's ``C`` convention: loss = C * sum(BCE) +
||w||^2 / 2), fitted by L-BFGS in float64 from zeros, so a seed fully determines it. ``C``
is chosen by ROC-AUC on a stratified held-out split, then the model is refitted on all data.
An MLP (one hidden layer) is available with ``kind = "mlp"``.
"""

from __future__ import annotations

from collections.abc import Sequence
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

    def prob_important(self, features: torch.Tensor) -> torch.Tensor:
        """``features`` ``[..., H]`` to probabilities ``[...]``."""
        x = (features.double().cpu() - self.mean) / self.std
        return torch.sigmoid(_logits(self.kind, self.state, x)).to(features.device).float()

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "mean": self.mean, "std": self.std, "state": self.state}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> JudgeClassifier:
        return cls(kind=data["kind"], mean=data["mean"], std=data["std"], state=data["state"])


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


def train_classifier(
    features: torch.Tensor,
    labels: torch.Tensor,
    kind: Kind = "logistic",
    c_grid: Sequence[float] = C_GRID,
    validation_fraction: float = 0.2,
    seed: int = 0,
    groups: Sequence[str] | None = None,
) -> tuple[JudgeClassifier, TrainReport]:
    """Choose C on a held-out split by ROC-AUC, then refit on everything.

    With ``groups`` (each row's prompt) the split holds out whole prompts, so the validation
    ROC-AUC measures mismatches of prompts the judge has not seen, as decoding meets them."""
    x = features.double()
    y = labels.double()
    if len(y) < 4 or int(y.sum()) in (0, len(y)):
        raise ValueError(
            f"need examples of both classes to train a judge (got {int(y.sum())} important "
            f"of {len(y)})"
        )
    if groups is not None and len(set(groups)) >= 5:
        train_idx, val_idx = _group_split(list(groups), validation_fraction, seed)
    else:
        train_idx, val_idx = _stratified_split(y, validation_fraction, seed)
    grid: dict[str, float | None] = {}
    best_c, best_auc = c_grid[0], -1.0
    for c in c_grid:
        model = _fit(kind, x[train_idx], y[train_idx], c, seed)
        auc = roc_auc(model.prob_important(x[val_idx]), y[val_idx]) if len(val_idx) else None
        grid[f"{c:g}"] = auc
        if auc is not None and auc > best_auc:
            best_c, best_auc = c, auc
    final = _fit(kind, x, y, best_c, seed)
    loss = float(torch.nn.functional.binary_cross_entropy(final.prob_important(x).double(), y))
    report = TrainReport(
        samples=len(y),
        important=int(y.sum()),
        unimportant=len(y) - int(y.sum()),
        validation_samples=len(val_idx),
        roc_auc=grid.get(f"{best_c:g}"),
        train_loss=loss,
        chosen_c=best_c,
        grid=grid,
    )
    return final, report


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


def _fit(kind: Kind, x: torch.Tensor, y: torch.Tensor, c: float, seed: int) -> JudgeClassifier:
    mean = x.mean(0)
    std = x.std(0).clamp(min=1e-6)
    z = (x - mean) / std
    torch.manual_seed(seed)
    state = _init_state(kind, z.shape[1])
    params = list(state.values())
    for p in params:
        p.requires_grad_(True)
    penalty = 1.0 / (2.0 * c)

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
    return JudgeClassifier(kind=kind, mean=mean, std=std, state=frozen)


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
