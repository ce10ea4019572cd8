"""How stable is the chosen band? Re-select on bootstrap resamples of the probe batches."""

from __future__ import annotations

import numpy as np

from .rules import select_layers


def bootstrap_stability(
    profile_for,
    n_batches: int,
    num_layers: int,
    rule: str,
    params: dict,
    *,
    resamples: int = 200,
    seed: int = 0,
    profiles_for=None,
) -> list[float]:
    """Fraction of resamples in which each layer is chosen.

    ``profile_for(batch_indices) -> (entropy, grad)`` recomputes the per-layer means from the
    per-batch records of the probe, so no model pass is repeated. ``profiles_for(draws)`` (optional)
    does it for every resample at once: ``draws`` is ``[resamples, n_batches]``, the result one
    (entropy, grad) pair per row, each equal to ``profile_for(row)``; the draws are the same.
    """
    if n_batches < 2 or resamples < 1:
        return [float("nan")] * num_layers
    draws = np.random.default_rng(seed).integers(0, n_batches, (resamples, n_batches))
    profiles = profiles_for(draws) if profiles_for is not None else (profile_for(row) for row in draws.tolist())
    counts = np.zeros(num_layers)
    done = 0
    for entropy, grad in profiles:
        try:
            chosen = select_layers(rule, entropy, grad, **params)
        except ValueError:  # a resample with a non-finite profile: skip it
            continue
        counts[chosen] += 1
        done += 1
    return (counts / max(done, 1)).tolist()
