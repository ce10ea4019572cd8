"""oracle.json / oracle.md / oracle.html: what each block is worth alone, and how each rule ranks them."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..io import atomic_write_json, versions
from ..reports.document import Report

METRIC_NAMES = {
    "test": "test accuracy",
    "validation": "validation accuracy",
    "completion_loss": "minus the validation completion loss",
}


SCALE = {"completion_loss": (1, 4)}  # nats, 4 digits; accuracies in points (×100, 2 digits)


def _pts(d: dict, key: str = "ci", metric: str = "test") -> str:
    """A difference of scores with an interval, mean [lo, hi]: points of accuracy, or nats of loss."""
    if not d or d.get("n", 1) == 0:
        return "n/a"
    ci, (scale, digits) = d.get(key), SCALE.get(metric, (100, 2))
    mean = f"{scale * d['mean']:+.{digits}f}"
    return mean if not ci or ci[0] != ci[0] else f"{mean} [{scale * ci[0]:+.{digits}f}, {scale * ci[1]:+.{digits}f}]"


def _abs(d: dict, metric: str) -> str:
    """An absolute score with its seed interval: accuracy in %, or the completion loss (its negative)."""
    if not d or d["n"] == 0:
        return "n/a"
    sign, (scale, digits) = (-1 if metric == "completion_loss" else 1), SCALE.get(metric, (100, 2))
    lo, hi = sorted(sign * scale * v for v in d["ci"])
    ci = "" if d["n"] < 2 else f" [{lo:.{digits}f}, {hi:.{digits}f}]"
    return f"{sign * scale * d['mean']:.{digits}f}{ci}"


def _corr(c: dict) -> str:
    if not c:
        return "n/a"
    if c["value"] != c["value"]:
        return "n/a (flat)"
    lo, hi = c["ci"]
    return f"{c['value']:+.2f} [{lo:+.2f}, {hi:+.2f}] p={c['p_permutation']:.3f}"


def _z(values) -> np.ndarray:
    v = np.asarray(values, dtype=float)
    return (v - v.mean()) / (v.std() or 1.0)


def profile_figure(res: dict):
    """One figure: above, the oracle's single-block gain with its seed interval (in points, or nats);
    below, the oracle profile beside every rule's block scores, each standardised over the blocks
    (z-scores) so that their shapes compare on one axis."""
    import matplotlib.pyplot as plt

    blocks, (scale, _) = res["blocks"], SCALE.get(res["metric"], (100, 2))
    gains = scale * np.array([r["gain"]["mean"] for r in res["table"]])
    ci = scale * np.array([r["gain"]["ci"] for r in res["table"]], dtype=float).reshape(len(blocks), 2)
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(7, 6), sharex=True, height_ratios=[1, 1.3])
    errors = np.nan_to_num(np.abs(np.stack([gains - ci[:, 0], ci[:, 1] - gains])))
    top.errorbar(blocks, gains, yerr=errors, fmt="o-", color="black", capsize=3)
    top.axhline(0, color="grey", lw=0.8)
    top.set_ylabel(f"gain over head ({'nats' if scale == 1 else 'points'})")
    top.set_title("oracle: each block alone (95 % t-interval over seeds)", fontsize=10)
    bottom.plot(blocks, _z(gains), "o-", color="black", lw=2.5, label="oracle")
    for row in res["rules"]:
        if "scores" in row:
            bottom.plot(blocks, _z(row["scores"]), "o--", ms=4, label=row["rule"])
    bottom.set_xlabel("block")
    bottom.set_ylabel("z-score over blocks (higher: adapt)")
    bottom.set_xticks(blocks)
    bottom.legend(fontsize=7)
    fig.tight_layout()
    return fig


def _block_table(rep: Report, res: dict) -> None:
    m = res["metric"]
    rep.table(
        [
            {
                "block": r["block"],
                "alone": _abs(r["single"], m),
                "gain over head (seeds)": _pts(r["gain"], metric=m),
                "gain (examples)": _pts(r["gain"], "examples_ci", m),
                "LOO loss vs all (seeds)": _pts(r["loo_loss"], metric=m),
                "LOO (examples)": _pts(r["loo_loss"], "examples_ci", m),
            }
            for r in res["table"]
        ]
    )


def _rule_table(rep: Report, res: dict) -> None:
    ks = sorted({k for r in res["rules"] for k in r["regret"]})
    rep.table(
        [
            {
                "rule": r["rule"],
                "Spearman vs gain": _corr(r.get("single", {}).get("spearman")),
                "Kendall vs gain": _corr(r.get("single", {}).get("kendall")),
                "Spearman vs LOO": _corr(r.get("loo", {}).get("spearman")),
                **{f"regret K={k}": _pts(r["regret"][k], metric=res["metric"]) for k in ks},
                "regret, its own choice": (
                    f"{_pts(r['regret_selected'], metric=res['metric'])} {r['selected']}"
                    if r.get("regret_selected")
                    else "n/a"
                ),
                "better than chance": "yes" if r.get("better_than_chance") else "no",
            }
            for r in res["rules"]
        ]
    )


def oracle_verdict(res: dict) -> str:
    rules = [r for r in res["rules"] if "scores" in r]
    good = [r["rule"] for r in rules if r["better_than_chance"]]
    if not rules:
        return "No rule with block scores was diagnosed."
    if not good:
        return (
            f"No rule ranks the blocks better than chance: none of {', '.join(r['rule'] for r in rules)} has a "
            "Spearman correlation with the single-block gains whose seed-bootstrap interval lies above 0 and "
            "whose permutation p is below 0.05."
        )
    return (
        f"Better than chance (Spearman with the single-block gains above 0 by its seed bootstrap, permutation "
        f"p < 0.05): {', '.join(good)}. The others are not told apart from a random order of the blocks."
    )


def render_oracle(res: dict, meta: dict, out: Path) -> dict:
    out = Path(out)
    atomic_write_json(out / "oracle.json", {**res, "meta": meta, "versions": versions()})
    plan = meta["plan"]
    metric = METRIC_NAMES[res["metric"]]
    rep = Report(f"Per-block oracle on {plan['model']} / {plan['task']}")
    head, every = (_abs(res["reference"][k], res["metric"]) for k in ("head", "all"))
    rep.text(
        f"Command: `{meta['command']}`  \nScore: {metric} (differences in points of accuracy, or nats of "
        f"loss). Seeds {res['seeds']}; `head` {head}, `all` {every} (absolute)."
    )
    if "leave-one-out" not in res["groups"]:
        rep.text(
            "**Partial:** the single-block arms are done; the leave-one-out arms are still running "
            "(this report is rewritten when they are)."
        )
    rep.heading("Verdict").text(oracle_verdict(res) + f" The oracle's order, best first: {res['oracle_order']}.")
    unit = "nats of completion loss" if res["metric"] == "completion_loss" else "points of accuracy"
    rep.heading(f"What each block is worth ({unit}; mean [95 % interval])")
    _block_table(rep, res)
    rep.text(
        "Gain: block b alone minus `head`; LOO loss: `all` minus every block but b (positive: b matters). "
        "Seeds: t-interval over seeds of the per-seed paired differences; examples: a paired bootstrap "
        "over evaluation examples (2,000 resamples; the seeds' differences averaged per example when every seed "
        "scores the same examples, else each seed resampled on its own and the seeds' means averaged)."
    )
    rep.heading("Rules against the oracle")
    _rule_table(rep, res)
    rep.text(
        "Correlations: value [95 % bootstrap over seeds of the oracle profile] and a one-sided permutation "
        "p over block orders (exact up to 7 blocks). Regret at K: mean single-block gain of the oracle's "
        "best K blocks minus that of the rule's top K, per seed (points; a proxy from the single-block arms, "
        "not a measured K-block arm; the oracle's best K is chosen on the same seeds, so it is optimistic). "
        "`random (expected)`: the regret of K blocks drawn at random. Its own choice: the blocks the rule "
        "chose at the comparison's budget (SKI's come from its band, not only its top scores)."
    )
    rep.figure(profile_figure(res), "oracle_profile", "oracle profile beside each rule's block scores (z-scores)")
    return rep.write(out, stem="oracle")
