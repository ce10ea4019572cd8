"""``alpha-hts``: AlphaLoRA's heavy-tail exponent α of each weight spectrum (``selectors.md`` §5).

Eigenvalues λ = σ² of WᵀW; power-law fits α_i = 1 + n/Σ_{j≥i} ln(λ_j/λ_i) (Hill form, n = N − i) for
every x_min = λ_i in a window around the peak of a 100-bin histogram of log₁₀λ; the fit with the
smallest Kolmogorov–Smirnov distance wins. The window's lower bound reproduces the reference code
(it compares λ with log₁₀(0.95·x*), a looser bound than 0.95·x*). Higher α (less well trained) is
selected.
"""

from __future__ import annotations

import math

import numpy as np

from .score_rule import matrix_rule
from .rule_registry import RULES


def hill_alpha(lam_tail) -> float:
    """Power-law MLE with x_min = the first (smallest) value of ``lam_tail`` (ascending)."""
    lam = np.asarray(lam_tail, dtype=float)
    logs = np.log(lam / lam[0]).sum()
    return 1 + len(lam) / logs if logs > 0 else math.inf


def ks_distance(lam_tail, alpha: float) -> float:
    """max_j |1 − (λ_j/x_min)^(1−α) − j/n| over the ascending tail (j = 0..n−1)."""
    lam = np.asarray(lam_tail, dtype=float)
    fitted = 1 - (lam / lam[0]) ** (1 - alpha)
    return float(np.abs(fitted - np.arange(len(lam)) / len(lam)).max())


def alpha_hts(singular_values, shape=None, bins: int = 100) -> float:
    lam = np.sort(np.asarray(singular_values, dtype=float) ** 2)
    lam = lam[lam > 0]
    if len(lam) < 3:
        return math.nan
    counts, edges = np.histogram(np.log10(lam), bins=bins)
    peak = 10 ** edges[np.argmax(counts)]
    low, high = math.log10(0.95 * peak), 1.5 * peak
    best_d, best_alpha = math.inf, math.nan
    for i in range(len(lam) - 1):
        if lam[i] < low:
            continue
        if lam[i] > high:
            break
        a = hill_alpha(lam[i:])
        d = ks_distance(lam[i:], a) if 1 < a < math.inf else 1.0
        if d < best_d:
            best_d, best_alpha = d, a
    return best_alpha


RULES.register("alpha-hts")(
    matrix_rule("alpha-hts", "high", alpha_hts, "float32", "AlphaLoRA: highest heavy-tail exponent α (weights only)")
)
