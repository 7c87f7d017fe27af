"""The statistical tests of ``specbench audit``.

Goodness of fit against the target's exact conditionals
-------------------------------------------------------
At draft position ``i`` each sample ``s`` has its own exact conditional ``p_s`` (its prefix
differs from other samples'). Tokens are binned by their *rank* under ``p_s`` (most likely,
second, ..., the rest), so every sample falls into one of ``B`` bins with known probabilities
``p_s[b]``. Under the null hypothesis the bin counts ``O`` are a sum of independent
categorical draws: mean ``E = sum_s p_s`` and covariance ``S = sum_s diag(p_s) - p_s p_s^T``.
The statistic ``(O - E)^T S^-1 (O - E)`` over ``B - 1`` bins is asymptotically chi-square with
``B - 1`` degrees of freedom (for identical ``p_s``, as at position 0, it *is* Pearson's
statistic). Ranks are merged until every bin expects at least 5 samples.

Two-sample homogeneity
----------------------
When a method's output cannot be compared with an in-process target (an external engine),
its samples are compared with the same engine's plain decoding: a 2 x C contingency table of
prefixes up to position ``i``, rare prefixes pooled so every expected count is >= 5,
Pearson's chi-square with ``C - 1`` degrees of freedom.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

MIN_EXPECTED = 5.0
#: Ranks kept per sample: bins beyond this are always merged into "the rest".
MAX_RANKS = 32


@dataclass(frozen=True)
class TestResult:
    """One test's outcome; ``statistic`` is ``inf`` when an impossible token was drawn."""

    test: str
    statistic: float
    df: int
    p_value: float
    samples: int
    detail: str = ""
    #: Observed and expected count per bin (goodness of fit), for the audit file.
    bins: dict[str, list[float]] = field(default_factory=dict)


def chi2_sf(statistic: float, df: int) -> float:
    """P(X >= statistic) for X ~ chi-square(df)."""
    if math.isinf(statistic):
        return 0.0
    if df <= 0:
        return 1.0
    value = torch.special.gammaincc(
        torch.tensor(df / 2, dtype=torch.float64), torch.tensor(statistic / 2, dtype=torch.float64)
    )
    return float(value)


@dataclass(frozen=True)
class RankedDraw:
    """What the goodness-of-fit test needs of one sample at one position.

    ``top`` holds the ``MAX_RANKS`` largest probabilities of the exact conditional in
    descending order; ``rank`` is the drawn token's rank in that order (ties broken by token
    id); ``prob`` is the drawn token's probability (0: the target could never draw it).
    """

    top: tuple[float, ...]
    rank: int
    prob: float


def ranked_draws(probs: torch.Tensor, tokens: Sequence[int]) -> list[RankedDraw]:
    """Rank ``tokens`` (one per draw) under one exact conditional ``probs`` ``[V]``."""
    top = torch.topk(probs, min(MAX_RANKS, probs.shape[-1])).values.double().tolist()
    index = torch.arange(probs.shape[-1], device=probs.device)
    out = []
    for token in tokens:
        p = probs[token]
        # Rank in a descending order with ties broken by id: consistent with ``top``.
        rank = int((probs > p).sum()) + int(((probs == p) & (index < token)).sum())
        out.append(RankedDraw(tuple(top), rank, float(p)))
    return out


def _bin_count(draws: Sequence[RankedDraw]) -> int:
    """Most rank bins (plus one for the rest) such that every bin expects >= 5 draws."""
    width = min(len(d.top) for d in draws)
    expected = np.array([sum(d.top[r] for d in draws) for r in range(width)])
    total = float(len(draws))
    bins = 0
    while bins < width:
        rest = total - expected[: bins + 1].sum()
        if expected[bins] < MIN_EXPECTED or rest < MIN_EXPECTED:
            break
        bins += 1
    return bins  # ranks 0..bins-1 are bins of their own; everything else is "the rest"


def goodness_of_fit(draws: Sequence[RankedDraw], name: str) -> TestResult | None:
    """Rank-binned chi-square of draws against their exact conditionals; ``None`` when the
    conditionals are too concentrated to test (no two bins reach 5 expected draws)."""
    impossible = sum(d.prob <= 0.0 for d in draws)
    if impossible:
        return TestResult(
            name,
            math.inf,
            0,
            0.0,
            len(draws),
            f"{impossible} draws of tokens the target gives probability 0",
        )
    ranks = _bin_count(draws)
    if ranks == 0:
        return None
    n_bins = ranks + 1
    probs = np.zeros((len(draws), n_bins))
    observed = np.zeros(n_bins)
    for row, d in enumerate(draws):
        probs[row, :ranks] = d.top[:ranks]
        probs[row, ranks] = max(0.0, 1.0 - sum(d.top[:ranks]))
        observed[min(d.rank, ranks)] += 1
    expected = probs.sum(axis=0)
    covariance = np.diag(expected) - probs.T @ probs
    # One bin is determined by the others: drop the last (the rest).
    delta = (observed - expected)[:-1]
    reduced = covariance[:-1, :-1]
    statistic = float(delta @ np.linalg.pinv(reduced) @ delta)
    df = n_bins - 1
    bins = {
        "observed": observed.astype(int).tolist(),
        "expected": [round(e, 2) for e in expected.tolist()],
    }
    p_value = chi2_sf(statistic, df)
    return TestResult(name, statistic, df, p_value, len(draws), f"{n_bins} bins", bins)


def homogeneity(
    ours: Sequence[tuple[int, ...]], reference: Sequence[tuple[int, ...]], name: str
) -> TestResult | None:
    """Pearson chi-square that two samples of outcomes come from one distribution."""
    counts_a, counts_b = Counter(ours), Counter(reference)
    n_a, n_b = len(ours), len(reference)
    total = n_a + n_b
    if not n_a or not n_b:
        return None
    share_a = n_a / total
    # Keep an outcome as its own category while both expected counts reach 5; pool the rest.
    kept: list[tuple[int, int]] = []
    pooled = [0, 0]
    for outcome in sorted(
        set(counts_a) | set(counts_b), key=lambda o: -(counts_a[o] + counts_b[o])
    ):
        a, b = counts_a[outcome], counts_b[outcome]
        column = a + b
        if column * min(share_a, 1 - share_a) >= MIN_EXPECTED:
            kept.append((a, b))
        else:
            pooled[0] += a
            pooled[1] += b
    if sum(pooled) * min(share_a, 1 - share_a) >= MIN_EXPECTED:
        kept.append((pooled[0], pooled[1]))
    elif kept and sum(pooled):  # too few to stand alone: merge into the smallest category
        a, b = kept.pop()
        kept.append((a + pooled[0], b + pooled[1]))
    if len(kept) < 2:
        return None
    statistic = 0.0
    for a, b in kept:
        column = a + b
        for observed, share in ((a, share_a), (b, 1 - share_a)):
            expected = column * share
            statistic += (observed - expected) ** 2 / expected
    df = len(kept) - 1
    detail = f"{len(kept)} categories, {n_a} vs {n_b} samples"
    return TestResult(name, statistic, df, chi2_sf(statistic, df), n_a, detail)
