"""Goodness-of-fit helpers for the exactness tests.

Every statistical test in this suite uses fixed seeds, so its outcome is deterministic; the
significance level says how unlikely a correct implementation is to have failed it for the
chosen seed. Cells with small expected counts are pooled so the chi-square approximation holds.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Hashable, Mapping

from scipy import stats

MIN_EXPECTED = 5.0


def chi_square_pvalue(observed: Counter[Hashable], probs: Mapping[Hashable, float]) -> float:
    """p-value of Pearson's chi-square test that ``observed`` counts follow ``probs``.

    Outcomes observed but given probability zero make the p-value 0 (an impossible outcome
    happened). Cells expecting fewer than ``MIN_EXPECTED`` counts are pooled into one.
    """
    n = sum(observed.values())
    if any(probs.get(outcome, 0.0) <= 0.0 for outcome in observed):
        return 0.0
    big_obs, big_exp, small_obs, small_exp = [], [], 0, 0.0
    for outcome, p in probs.items():
        expected = n * p
        if expected >= MIN_EXPECTED:
            big_obs.append(observed.get(outcome, 0))
            big_exp.append(expected)
        else:
            small_obs += observed.get(outcome, 0)
            small_exp += expected
    if small_exp > 0:
        big_obs.append(small_obs)
        big_exp.append(small_exp)
    total = sum(big_exp)
    big_exp = [e * n / total for e in big_exp]  # absorb round-off so sums match exactly
    if len(big_obs) < 2:
        return 1.0
    return float(stats.chisquare(big_obs, big_exp).pvalue)
