"""Summaries over seeds: mean ± sd, a t-based 95% interval, and paired differences."""

from __future__ import annotations

import math

import numpy as np

EXAMPLE_BOOT = 2000  # resamples of a paired bootstrap over evaluation examples (selectors.md §10.4)


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
    """a − b over the seeds both have, with the per-seed differences and the paired t-test's p."""
    seeds = sorted(set(a) & set(b))
    diffs = {s: a[s] - b[s] for s in seeds}
    return {"per_seed": diffs, **summary(list(diffs.values())), "p": paired_p(list(diffs.values()))}


def paired_p(diffs: list[float]) -> float:
    """Two-sided one-sample t-test of mean difference 0 (NaN below two values). Identical non-zero
    differences have sd 0 and p 0; all-zero differences p 1."""
    v = np.asarray([x for x in diffs if x is not None and math.isfinite(x)], dtype=float)
    if len(v) < 2:
        return math.nan
    if v.std(ddof=1) == 0:
        return 1.0 if v.mean() == 0 else 0.0
    from scipy import stats

    return float(stats.ttest_1samp(v, 0.0).pvalue)


def holm(pvalues: dict[str, float]) -> dict[str, float]:
    """Holm–Bonferroni adjusted p-values for one family of tests (step-down, monotone, at most 1);
    NaN p-values stay NaN and do not count toward the family size."""
    finite = sorted((p, k) for k, p in pvalues.items() if math.isfinite(p))
    adjusted, running = {k: math.nan for k in pvalues}, 0.0
    for i, (p, k) in enumerate(finite):
        running = max(running, min(1.0, (len(finite) - i) * p))
        adjusted[k] = running
    return adjusted


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


def example_interval(
    pairs: list[tuple[np.ndarray, np.ndarray]], same_examples: bool = False, seed: int = 0
) -> list[float] | None:
    """95 % percentile interval of the mean paired difference a − b over examples (``EXAMPLE_BOOT`` resamples;
    a seed's a and b score the same examples). When every seed scores the same examples (no
    --limit-eval), one draw of examples serves all seeds; else each seed's examples are drawn on their
    own and the seeds' means averaged. None when a seed lacks per-example scores."""
    if not pairs or any(a is None or b is None or len(a) != len(b) for a, b in pairs):
        return None
    rng = np.random.default_rng(seed)
    if same_examples and len({len(a) for a, _ in pairs}) == 1:
        d = np.mean([a - b for a, b in pairs], axis=0)
        return np.percentile(d[rng.integers(0, len(d), (EXAMPLE_BOOT, len(d)))].mean(axis=1), [2.5, 97.5]).tolist()
    means = [(a - b)[rng.integers(0, len(a), (EXAMPLE_BOOT, len(a)))].mean(axis=1) for a, b in pairs]
    return np.percentile(np.mean(means, axis=0), [2.5, 97.5]).tolist()
