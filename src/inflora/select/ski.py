"""SKI: a per-layer score that is high where attention is saturated *and* gradient is suppressed.

SKI(l) = α·H̃(l) + (1 − α)·G̃(l), with H̃ the min–max normalised inverse attention entropy and G̃ the
normalised inverse activation-gradient norm (``level``) or inverse ratio G(l)/G(l+1) (``decay``:
a steep drop into layer l scores high). Peaks of SKI are the inflection candidates.
"""

from __future__ import annotations

import numpy as np

from ..errors import ConfigError, DataError


def inverse_minmax(values) -> np.ndarray:
    """(max − v)/(max − min): low values score 1; a flat profile scores 0 everywhere."""
    v = np.asarray(values, dtype=float)
    span = v.max() - v.min()
    return np.zeros_like(v) if span == 0 else (v.max() - v) / span


def decay_ratios(grad) -> np.ndarray:
    """r_l = G(l)/G(l+1); the last layer has nothing above it and gets r = 1 (no drop) [ours]."""
    g = np.asarray(grad, dtype=float)
    r = np.ones_like(g)
    r[:-1] = g[:-1] / np.where(g[1:] == 0, np.finfo(float).tiny, g[1:])
    return r


def ski_terms(entropy, grad, alpha: float = 0.5, variant: str = "level") -> dict[str, np.ndarray]:
    """The two normalised terms and their weighted sum."""
    if not 0.0 <= alpha <= 1.0:
        raise ConfigError(f"alpha must lie in [0, 1], got {alpha}")
    e, g = np.asarray(entropy, dtype=float), np.asarray(grad, dtype=float)
    if e.shape != g.shape or e.ndim != 1 or len(e) == 0:
        raise DataError(f"entropy and gradient profiles must be equal-length 1-D, got {e.shape} and {g.shape}")
    if not (np.isfinite(e).all() and np.isfinite(g).all()):
        bad = np.flatnonzero(~(np.isfinite(e) & np.isfinite(g))).tolist()
        raise DataError(f"non-finite diagnostics at layers {bad}; cannot score them (see the per-layer flags)")
    if variant == "level":
        g_term = inverse_minmax(g)
    elif variant == "decay":
        g_term = inverse_minmax(decay_ratios(g))
    else:
        raise ConfigError(f"unknown SKI variant {variant!r}; use 'level' or 'decay'")
    h_term = inverse_minmax(e)
    return {"entropy_term": h_term, "grad_term": g_term, "ski": alpha * h_term + (1 - alpha) * g_term}


def local_maxima(score, boundary: bool = True, plateaus: bool = False) -> list[int]:
    """Indices strictly above their neighbours; layer 0 and the last count when above their one
    neighbour (``boundary``). With ``plateaus``, a run of equal values above both its neighbours is
    one peak, placed at the run's middle (lower middle for an even run) [ours: the paper is silent]."""
    s = list(score)
    n = len(s)
    if n == 1:
        return [0]
    peaks = []
    i = 0
    while i < n:
        j = i
        if plateaus:
            while j + 1 < n and s[j + 1] == s[i]:
                j += 1
        left = s[i - 1] < s[i] if i > 0 else boundary
        right = s[j + 1] < s[j] if j < n - 1 else boundary
        if left and right and (i > 0 or j < n - 1):
            peaks.append((i + j) // 2)
        i = j + 1
    return peaks


def band_from_peaks(score, peaks: list[int], top: int = 2, widen: int = 1) -> list[int]:
    """Keep the ``top`` highest peaks and widen each by ±``widen`` layers (clipped to the model)."""
    n = len(score)
    best = sorted(peaks, key=lambda i: (-score[i], i))[:top]
    band = {j for i in best for j in range(i - widen, i + widen + 1) if 0 <= j < n}
    return sorted(band)
