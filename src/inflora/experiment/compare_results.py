"""From the arms of a comparison to its table, paired differences and a recommendation.

Per rule: accuracy mean ± sd and t-interval over seeds; paired differences (same seed) against the
best rule, against SKI and against ``all``, each family with Holm-corrected p-values. The
recommendation names a winner only when every other rule is below it by a paired t-test at 5 %,
Holm-corrected over the comparisons against the best (the best is chosen after looking, and several
rules are compared at once); otherwise it names the rules it cannot tell apart and the cheapest of
them (inputs: nothing < weights < a forward pass < a backward pass; then trainable parameters).
"""

from __future__ import annotations

import math

import numpy as np

from ..select import COST_ORDER, rule_needs
from .scores import LOSS, arm_score, example_scores, score_metric, shown
from .stats import example_interval, holm, paired, summary

METRICS = ("test", "test_decontaminated", "validation", LOSS)


def primary_metric(arms: list[dict]) -> str:
    """RT test when the task has one (SST-2 has no labelled test split), else validation accuracy,
    else (instruction data without label options) the validation completion loss: ``scores.py``."""
    return score_metric(arms)


def rule_rows(arms: list[dict], rules: list[str]) -> list[dict]:
    rows = []
    for rule in rules:
        runs = [a for a in arms if a["rule"] == rule]
        if not runs:
            continue
        row = {
            "rule": rule,
            "seeds": sorted(a["seed"] for a in runs),
            "needs": sorted(rule_needs(rule)),
            "layers": {a["seed"]: a["layers"] for a in runs},
            "r": runs[0]["r"],
            "trainable_params": int(np.mean([a["trainable_params"] for a in runs])),
            "lora_params": runs[0].get("lora_params"),
            "step_seconds": float(np.mean([1 / a["steps_per_second"] for a in runs if a["steps_per_second"]])),
        }
        for metric in METRICS:
            per_seed = {a["seed"]: arm_score(a, metric) for a in runs if arm_score(a, metric) is not None}
            row[metric] = {"per_seed": per_seed, **summary(list(per_seed.values()))}
        rows.append(row)
    return rows


def _cost(row: dict) -> tuple:
    return (max([COST_ORDER[n] for n in row["needs"]] or [0]), row["trainable_params"], row["step_seconds"])


def recommend(rows: list[dict], metric: str) -> dict:
    """The winner and how sure, or the rules that cannot be told apart and the cheapest of them."""
    scored = [r for r in rows if math.isfinite(r[metric]["mean"])]
    if not scored:
        return {"winner": None, "text": "no arm finished; nothing to recommend"}
    best = max(scored, key=lambda r: r[metric]["mean"])
    diffs = {r["rule"]: paired(best[metric]["per_seed"], r[metric]["per_seed"]) for r in scored if r is not best}
    p_holm = holm({n: d["p"] for n, d in diffs.items()})
    beaten = sorted(n for n, d in diffs.items() if d["n"] > 1 and d["mean"] > 0 and p_holm[n] < 0.05)
    tied = [r for r in scored if r is best or r["rule"] not in beaten]
    cheapest = min(tied, key=_cost)["rule"]
    n = min((d["n"] for d in diffs.values()), default=len(best[metric]["per_seed"]))
    pct = (
        f"completion loss {shown(metric, best[metric]['mean']):.4f}"
        if metric == LOSS
        else f"{shown(metric, best[metric]['mean']):.2f} %"
    )
    points = "nats" if metric == LOSS else "points"
    if not diffs:
        text = f"only one rule was run ({best['rule']}, {pct}); nothing to compare"
    elif n < 2:
        text = f"{best['rule']} has the best mean ({pct}), but one seed gives no interval: run more seeds"
    elif len(tied) == 1:
        margin = min(diffs.values(), key=lambda d: d["mean"])
        margin_txt = f"{margin['mean']:.4f}" if metric == LOSS else f"{100 * margin['mean']:+.2f}"
        text = (
            f"**{best['rule']}** wins ({pct}): every other rule is below it (paired t-tests, Holm-corrected "
            f"p < 0.05; n = {n} seeds; smallest margin {margin_txt} {points})"
        )
    elif len(tied) == len(scored):
        text = (
            f"no rule is distinguishable from the best mean ({best['rule']}, {pct}): no paired t-test "
            f"against it reaches Holm-corrected p < 0.05 (n = {n} seeds). The cheapest one suffices: **{cheapest}**"
        )
    else:
        others = ", ".join(r["rule"] for r in tied if r is not best)
        text = (
            f"{best['rule']} has the best mean ({pct}) and beats {', '.join(beaten)}, but cannot be told "
            f"apart from {others} (n = {n} seeds). Among those, the cheapest suffices: **{cheapest}**"
        )
    if cheapest == "random" and len(tied) > 1:
        text += " (no selection rule was told apart from K blocks drawn at random)"
    return {
        "winner": best["rule"] if len(tied) == 1 and n > 1 else None,
        "best_mean": best["rule"],
        "indistinguishable": [r["rule"] for r in tied],
        "beaten": beaten,
        "cheapest": cheapest,
        "seeds": n,
        "p_holm": p_holm,
        "text": text,
    }


def _examples(arms: list[dict], a: str, b: str, metric: str, same_examples: bool) -> list[float] | None:
    """The paired bootstrap over evaluation examples of rule a − rule b (seeds both have), or None
    when the arms kept no per-example scores (units cached before they were kept)."""
    by = {(x["rule"], x["seed"]): x for x in arms}
    seeds = sorted({s for r, s in by if r == a} & {s for r, s in by if r == b})
    return example_interval(
        [(example_scores(by[a, s], metric), example_scores(by[b, s], metric)) for s in seeds], same_examples
    )


def aggregate_compare(arms: list[dict], rules: list[str], same_examples: bool = False) -> dict:
    """``same_examples``: every seed scored the same evaluation examples (no --limit-eval)."""
    metric = primary_metric(arms)
    rows = rule_rows(arms, rules)
    best = max((r for r in rows if math.isfinite(r[metric]["mean"])), key=lambda r: r[metric]["mean"], default=None)
    rec = recommend(rows, metric)
    pairs, seen = [], []
    for label in ("best", "ski", "all"):  # each family Holm-corrected on its own (selectors.md §10.4)
        against = best if label == "best" else next((r for r in rows if r["rule"] == label), None)
        if against is None or any(against is r for r in seen):  # e.g. `all` is the best: listed once
            continue
        seen.append(against)
        family = [
            {
                "against": label,
                "comparison": f"{row['rule']} − {against['rule']}",
                **paired(row[metric]["per_seed"], against[metric]["per_seed"]),
                "examples_ci": _examples(arms, row["rule"], against["rule"], metric, same_examples),
            }
            for row in rows
            if row is not against
        ]
        adjusted = holm({i: d["p"] for i, d in enumerate(family)})
        pairs += [{**d, "p_holm": adjusted[i]} for i, d in enumerate(family)]
    return {"metric": metric, "table": rows, "paired": pairs, "recommendation": rec}
