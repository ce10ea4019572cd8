"""How stable is the chosen band? Re-select on bootstrap resamples of the probe batches."""
from __future__ import annotations

import numpy as np

from .rules import select_layers


def bootstrap_stability(
    profile_for, n_batches: int, num_layers: int, rule: str, params: dict, *, resamples: int = 200, seed: int = 0
) -> list[float]:
    """Fraction of resamples in which each layer is chosen.

    ``profile_for(batch_indices) -> (entropy, grad)`` recomputes the per-layer means from the
    per-batch records of the probe, so no model pass is repeated.
    """
    if n_batches < 2 or resamples < 1:
        return [float("nan")] * num_layers
    rng = np.random.default_rng(seed)
    counts = np.zeros(num_layers)
    done = 0
    for _ in range(resamples):
        idx = rng.integers(0, n_batches, n_batches).tolist()
        entropy, grad = profile_for(idx)
        try:
            chosen = select_layers(rule, entropy, grad, **params)
        except ValueError:  # a resample with a non-finite profile: skip it
            continue
        counts[chosen] += 1
        done += 1
    return (counts / max(done, 1)).tolist()
