"""Rank correlations of one fixed score vector against many profiles at once (rows of a matrix).

The oracle compares each rule's block scores with thousands of bootstrap and permutation profiles;
scipy's ``spearmanr``/``kendalltau`` called per row would dominate the report's time, so these are
vectorised (and tested against scipy). Ties get average ranks (Spearman) and tau-b (Kendall);
a constant vector gives NaN, as in scipy.
"""

from __future__ import annotations

import itertools
import math

import numpy as np
from scipy.stats import rankdata


def spearman_rows(x, ys) -> np.ndarray:
    """Spearman's rho of ``x`` with each row of ``ys``."""
    rx = rankdata(np.asarray(x, dtype=float))
    ry = rankdata(np.atleast_2d(np.asarray(ys, dtype=float)), axis=1)
    rx, ry = rx - rx.mean(), ry - ry.mean(axis=1, keepdims=True)
    denom = np.sqrt((rx**2).sum()) * np.sqrt((ry**2).sum(axis=1))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(denom > 0, ry @ rx / np.where(denom > 0, denom, 1), np.nan)


def kendall_rows(x, ys) -> np.ndarray:
    """Kendall's tau-b of ``x`` with each row of ``ys``."""
    x = np.asarray(x, dtype=float)
    ys = np.atleast_2d(np.asarray(ys, dtype=float))
    i, j = np.triu_indices(len(x), k=1)
    sx = np.sign(x[i] - x[j])
    sy = np.sign(ys[:, i] - ys[:, j])
    denom = np.sqrt((sx != 0).sum() * (sy != 0).sum(axis=1))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(denom > 0, sy @ sx / np.where(denom > 0, denom, 1), np.nan)


CORRELATIONS = {"spearman": spearman_rows, "kendall": kendall_rows}


def permutations(n: int, limit: int = 10_000, seed: int = 0) -> np.ndarray:
    """Every permutation of ``range(n)`` when there are at most ``limit``, else ``limit`` random ones."""
    if math.factorial(n) <= limit:
        return np.array(list(itertools.permutations(range(n))))
    rng = np.random.default_rng(seed)
    return np.array([rng.permutation(n) for _ in range(limit)])


def permutation_p(x, y, fn) -> float:
    """One-sided p that a random order of the blocks agrees with ``y`` at least as well as ``x``
    (exact over all orders for up to 7 blocks)."""
    y = np.asarray(y, dtype=float)
    observed = fn(x, y[None])[0]
    if not math.isfinite(observed):
        return math.nan
    null = fn(x, y[permutations(len(y))])
    return float(np.mean(null >= observed - 1e-12))
