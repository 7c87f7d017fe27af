"""What speculative decoding should achieve, from Leviathan et al. (2023), Section 3.

``alpha`` is the per-token acceptance probability, ``k`` (their gamma) the draft length and
``c`` the cost of one draft step over the cost of one target step.
"""

from __future__ import annotations


def expected_tokens_per_step(alpha: float, k: int) -> float:
    """E[tokens per target call] = (1 - alpha^(k+1)) / (1 - alpha); counts the bonus token."""
    if alpha >= 1.0:
        return float(k + 1)
    return (1.0 - alpha ** (k + 1)) / (1.0 - alpha)


def predicted_speedup(alpha: float, k: int, c: float) -> float:
    """Walltime improvement of Theorem 3.8: E[tokens per step] / (k c + 1)."""
    return expected_tokens_per_step(alpha, k) / (k * c + 1.0)
