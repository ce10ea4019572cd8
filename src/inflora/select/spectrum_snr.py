"""``spectrum-snr``: Spectrum's signal-to-noise ratio of each weight matrix (``selectors.md`` §1).

σ̂ = IQR of the singular values / 1.349, τ = σ̂·(1 + √β) with β = min(m,n)/max(m,n); signal = Σσ>τ,
noise = Σσ≤τ (1 when empty); SNR = signal / noise / σ₁. Highest SNR is selected. τ is not the
Marchenko–Pastur edge (no dimension scaling), so values are compared only within a module type.
"""

from __future__ import annotations

import math

import numpy as np

from .score_rule import matrix_rule
from .rule_registry import RULES


def spectrum_snr(singular_values, shape: tuple[int, int]) -> float:
    s = np.sort(np.asarray(singular_values, dtype=float))[::-1]
    q25, q75 = np.quantile(s, [0.25, 0.75])
    sigma = (q75 - q25) / 1.349
    beta = min(shape) / max(shape)
    tau = sigma * (1 + math.sqrt(beta))
    signal = s[s > tau].sum()
    noise = s[s <= tau].sum() if (s <= tau).any() else 1.0
    return float(signal / noise / s[0]) if s[0] > 0 else math.nan


RULES.register("spectrum-snr")(
    matrix_rule(
        "spectrum-snr", "high", spectrum_snr, "float32", "Spectrum: highest weight signal-to-noise ratio (weights only)"
    )
)
