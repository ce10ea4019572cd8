"""Summaries over seeds: mean ± sd, a t-based 95% interval, and paired differences."""
from __future__ import annotations

import math

import numpy as np


def summary(values: list[float], level: float = 0.95) -> dict:
    """Mean, sample sd and a two-sided t interval; with one value the interval is undefined (NaN)."""
    v = np.asarray([x for x in values if x is not None and math.isfinite(x)], dtype=float)
    n = len(v)
    if n == 0:
        return {"n": 0, "mean": math.nan, "sd": math.nan, "ci": [math.nan, math.nan]}
    mean = float(v.mean())
    if n == 1:
        return {"n": 1, "mean": mean, "sd": math.nan, "ci": [math.nan, math.nan]}
    from scipy import stats

    sd = float(v.std(ddof=1))
    half = float(stats.t.ppf(0.5 + level / 2, n - 1)) * sd / math.sqrt(n)
    return {"n": n, "mean": mean, "sd": sd, "ci": [mean - half, mean + half]}


def paired(a: dict[int, float], b: dict[int, float]) -> dict:
    """a − b over the seeds both have, with the per-seed differences."""
    seeds = sorted(set(a) & set(b))
    diffs = {s: a[s] - b[s] for s in seeds}
    return {"per_seed": diffs, **summary(list(diffs.values()))}


def verdict(ci: list[float], direction: int) -> str:
    """``supported`` when the interval lies wholly on the claimed side of 0 (direction +1 or −1),
    ``not supported`` when wholly on the other side, else ``inconclusive``."""
    lo, hi = ci
    if not (math.isfinite(lo) and math.isfinite(hi)):
        return "inconclusive"
    if (lo > 0 and direction > 0) or (hi < 0 and direction < 0):
        return "supported"
    if (hi < 0 and direction > 0) or (lo > 0 and direction < 0):
        return "not supported"
    return "inconclusive"
