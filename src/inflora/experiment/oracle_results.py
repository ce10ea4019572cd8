"""From the oracle's arms to what each block is worth and how well each rule ranks the blocks.

Per block: the single-block gain over ``head`` and the leave-one-out loss against ``all`` per seed,
with t-intervals over seeds and a paired bootstrap over test examples (selectors.md §10.4). Per rule
(its block scores, oriented so that higher means "adapt this block"): Spearman and Kendall against
the mean single-block gain and the mean leave-one-out loss, each with a bootstrap interval over seeds
and a permutation p (how often a random order of the blocks agrees as well), and the regret at
K = 1, 2, 3: the mean single-block gain of the oracle's best K blocks minus that of the rule's top K,
per seed. That regret is a proxy from the single-block arms (it assumes a K-block arm is worth the
mean of its blocks alone), not a measured K-block arm.
"""

from __future__ import annotations

import math

import numpy as np

from .rank_corr import CORRELATIONS, permutation_p
from .scores import arm_score, example_scores, score_metric
from .stats import example_interval, summary

BOOT = 2000
KS = (1, 2, 3)


def _difference(by: dict, a: str, b: str, seeds: list[int], metric: str, same: bool) -> dict:
    per_seed = {
        s: arm_score(by[a, s], metric) - arm_score(by[b, s], metric) for s in seeds if (a, s) in by and (b, s) in by
    }
    pairs = [(example_scores(by[a, s], metric), example_scores(by[b, s], metric)) for s in per_seed]
    return {"per_seed": per_seed, **summary(list(per_seed.values())), "examples_ci": example_interval(pairs, same)}


def block_rows(arms: list[dict], blocks: list[int], metric: str, same_examples: bool = False) -> list[dict]:
    by = {(a["rule"], a["seed"]): a for a in arms}
    seeds = sorted({a["seed"] for a in arms})
    return [
        {
            "block": b,
            "single": summary([arm_score(by[f"block-{b}", s], metric) for s in seeds if (f"block-{b}", s) in by]),
            "gain": _difference(by, f"block-{b}", "head", seeds, metric, same_examples),
            "loo_loss": _difference(by, "all", f"without-{b}", seeds, metric, same_examples),
        }
        for b in blocks
    ]


def oriented(entry: dict) -> np.ndarray | None:
    """A rule's block scores with higher = "adapt this block"; None for rules without scores."""
    raw = entry.get("raw") or []
    if entry.get("direction") not in ("high", "low") or any(v is None for v in raw):
        return None
    values = np.asarray(raw, dtype=float)
    return values if entry["direction"] == "high" else -values


def _matrix(rows: list[dict], key: str) -> np.ndarray:
    """Seeds × blocks of per-seed differences, over the seeds every block has (none while the arms
    are still running)."""
    seeds = sorted(set.intersection(*(set(r[key]["per_seed"]) for r in rows))) if rows else []
    return np.array([[r[key]["per_seed"][s] for r in rows] for s in seeds], dtype=float).reshape(len(seeds), len(rows))


def agreement(x: np.ndarray, profile: np.ndarray, seed: int = 0) -> dict:
    """Spearman and Kendall of ``x`` with the seed-mean ``profile`` (seeds × blocks), with a bootstrap
    interval over seeds and a one-sided permutation p over block orders."""
    if len(profile) == 0:
        return {}
    mean = profile.mean(axis=0)
    idx = np.random.default_rng(seed).integers(0, len(profile), (BOOT, len(profile)))
    boots = profile[idx].mean(axis=1)
    out = {}
    for name, fn in CORRELATIONS.items():
        value = float(fn(x, mean[None])[0])
        ci = _percentiles(fn(x, boots)) if len(profile) > 1 else [math.nan, math.nan]
        out[name] = {"value": value, "ci": ci, "p_permutation": permutation_p(x, mean, fn)}
    return out


def _percentiles(values: np.ndarray) -> list[float]:
    """The 95 % percentile interval, ignoring NaN (a resample whose profile is flat has no ranks)."""
    values = values[np.isfinite(values)]
    return np.percentile(values, [2.5, 97.5]).tolist() if len(values) else [math.nan, math.nan]


def regret(top: list[int], chosen: list[int], gains: np.ndarray) -> dict:
    """Per seed: mean gain of the oracle's ``top`` blocks minus that of ``chosen`` (columns of ``gains``)."""
    return summary([float(g[top].mean() - g[chosen].mean()) for g in gains])


def rule_rows(rules: dict, blocks: list[int], rows: list[dict]) -> list[dict]:
    gains, loo = _matrix(rows, "gain"), _matrix(rows, "loo_loss")
    order = np.argsort(-gains.mean(axis=0), kind="stable") if len(gains) else np.arange(len(blocks))
    ks = [k for k in KS if k <= len(blocks)]
    out = [
        {
            "rule": "random (expected)",
            "regret": {k: summary([float(g[order[:k]].mean() - g.mean()) for g in gains]) for k in ks},
        }
    ]
    for name, entry in rules.items():
        scores = oriented(entry)
        if scores is None:
            continue
        x = scores[blocks]
        mine = np.argsort(-x, kind="stable")
        position = {b: i for i, b in enumerate(blocks)}
        picked = [position[b] for b in entry.get("selected", []) if b in position]
        out.append(
            {
                "rule": name,
                "scores": x.tolist(),
                "single": agreement(x, gains),
                "loo": agreement(x, loo, 1),
                "regret": {k: regret(order[:k], mine[:k], gains) for k in ks},
                "selected": entry.get("selected"),
                "regret_selected": regret(order[: len(picked)], picked, gains) if picked else None,
            }
        )
    return out


def better_than_chance(row: dict) -> bool:
    """Spearman with the single-block gains above 0 by its seed bootstrap and its permutation p < 0.05."""
    s = row.get("single", {}).get("spearman")
    return bool(s and s["ci"][0] > 0 and s["p_permutation"] < 0.05)


def aggregate_oracle(oracle: dict, diagnosis_rules: dict) -> dict:
    arms, blocks = oracle["arms"], oracle["blocks"]
    metric = score_metric(arms)
    rows = block_rows(arms, blocks, metric, oracle.get("same_examples", False))
    ref = {name: summary([arm_score(a, metric) for a in arms if a["rule"] == name]) for name in ("head", "all")}
    rules = rule_rows(diagnosis_rules["rules"], blocks, rows)
    for r in rules:
        r["better_than_chance"] = better_than_chance(r)
    best = [blocks[i] for i in np.argsort(-np.array([r["gain"]["mean"] for r in rows]), kind="stable")]
    return {
        "metric": metric,
        "blocks": blocks,
        "depth": oracle["depth"],
        "reference": ref,
        "table": rows,
        "groups": oracle.get("groups", ["reference", "single", "leave-one-out"]),
        "rules": rules,
        "oracle_order": best,
        "seeds": sorted({a["seed"] for a in arms}),
    }
