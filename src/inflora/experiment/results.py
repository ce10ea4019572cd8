"""From raw unit results to the experiment's tables: per regime × strategy summaries, paired
differences against lora-inflection, the OVER/UNDER gradient ratio, bands and mean profiles."""

from __future__ import annotations

import math

import numpy as np

from .forgetting import versus_random
from .saturation import saturation_summary
from .stats import paired, summary

METRICS = ("test", "test_decontaminated")
REFERENCE = "lora-inflection"


def mean_activation_grad(run: dict) -> float:
    """Mean over logged steps and layers of the activation-gradient norm during target training."""
    rows = [v for r in run["grad_profile"] for v in r["activation_grad_norm"] if v is not None and math.isfinite(v)]
    return float(np.mean(rows)) if rows else math.nan


def low_layer_delta_cka(profile: list[float]) -> float:
    """Mean ΔCKA over the lower half of the layers: did low-level features change?"""
    half = max(1, len(profile) // 2)
    return float(np.mean(profile[:half])) if profile else math.nan


def mean_profile(runs: list[dict], key: str) -> list[float]:
    per_run = []
    for run in runs:
        if key == "delta_cka":
            per_run.append(run["delta_cka"])
        elif run["grad_profile"]:
            per_run.append(np.nanmean(np.array([r[key] for r in run["grad_profile"]], dtype=float), axis=0))
    return np.nanmean(np.array(per_run, dtype=float), axis=0).tolist() if per_run else []


def source_summary(sources: dict) -> dict:
    """Per seed: SST-2 validation accuracy and train loss at the UNDER and OVER epochs: how under- and
    over-trained the two checkpoints really are."""
    out = {}
    for seed, src in sources.items():
        by_epoch = {h["epoch"]: h for h in src.get("history", [])}
        regimes = {g: by_epoch.get(src.get(f"{g}_epoch")) for g in ("under", "over")}
        if all(regimes.values()):
            out[int(seed)] = {
                g: {
                    "epoch": h["epoch"],
                    "train_loss": h["train_loss"],
                    "sst2_validation_accuracy": h["validation_accuracy"],
                }
                for g, h in regimes.items()
            }
            out[int(seed)]["train_seconds"] = src.get("train_seconds")
    return out


def forgetting(retention: dict, sources: dict, regime: str) -> dict:
    """Per seed: the source checkpoint's SST-2 validation accuracy minus the same after target training
    (points lost; positive = forgotten)."""
    per_seed = {
        s: sources[int(s)][regime]["sst2_validation_accuracy"] - acc
        for s, acc in retention.items()
        if int(s) in sources
    }
    return {"per_seed": per_seed, **summary(list(per_seed.values()))}


def rule_recommendations(table: list[dict], metric: str = "test") -> dict:
    """Per regime, the LoRA arms read as rules at the matched budget and judged like ``inflora compare``
    (Holm-corrected paired tests against the best; else the cheapest indistinguishable rule). Only
    when the experiment has peer-rule arms (``lora-<rule>``) beside SKI's."""
    from ..select import rule_needs
    from ..strategies.rule_arms import rule_behind
    from .compare_results import recommend

    arms = [(r, rule_behind(r["strategy"])) for r in table]
    out = {}
    for regime in sorted({r["regime"] for r in table}):
        rows = [
            {**r, "rule": rule, "needs": sorted(rule_needs(rule))} for r, rule in arms if r["regime"] == regime and rule
        ]
        if any(r["rule"] not in ("ski", "random", "all") for r in rows):
            out[regime] = recommend(rows, metric)
    return out


def aggregate(
    targets: list[dict],
    diagnoses: dict,
    sources: dict | None = None,
    train_diagnoses: dict | None = None,
    metrics: tuple[str, ...] = METRICS,
) -> dict:
    """Tables, paired differences and claims' inputs over ``metrics`` (sst2-to-trec has no decontaminated test)."""
    table = _strategy_rows(targets, metrics, sources)
    bands = {}
    for key, d in diagnoses.items():
        regime, seed = key.split("/")
        bands.setdefault(int(seed), {})[regime] = {"band": d["inflection_layers"], "stability": d["stability"]}
    return {
        "table": table,
        "paired": _paired_rows(table, metrics),
        "grad_ratio": _grad_ratios(table),
        "bands": bands,
        "metrics": list(metrics),
        "rule_recommendations": {m: rule_recommendations(table, m) for m in metrics},
        "versus_random": versus_random(table),
        "sources": source_summary(sources or {}),
        "saturation": saturation_summary(diagnoses, train_diagnoses, targets),
    }


def _strategy_rows(targets: list[dict], metrics: tuple[str, ...], sources: dict | None) -> list[dict]:
    """One row per (regime, strategy): sizes, speed, blocks, gradient and ΔCKA profiles, every metric
    per seed with its summary, and the forgetting against the source checkpoint."""
    by = {}
    for run in targets:
        by.setdefault((run["regime"], run["strategy"]), []).append(run)
    table = []
    for (regime, strategy), runs in sorted(by.items()):
        row = {
            "regime": regime,
            "strategy": strategy,
            "seeds": sorted(r["seed"] for r in runs),
            "trainable_params": int(np.mean([r["trainable_params"] for r in runs])),
            "trainable_per_seed": {r["seed"]: r["trainable_params"] for r in runs},
            "step_seconds": float(np.mean([1 / r["steps_per_second"] for r in runs if r["steps_per_second"]])),
            "layers": runs[0]["layers"] if len({tuple(r["layers"]) for r in runs}) == 1 else "per seed",
            "mean_activation_grad": {r["seed"]: mean_activation_grad(r) for r in runs},
            "low_layer_delta_cka": {r["seed"]: low_layer_delta_cka(r["delta_cka"]) for r in runs},
            "profiles": {
                "activation_grad_norm": mean_profile(runs, "activation_grad_norm"),
                "param_grad_norm": mean_profile(runs, "param_grad_norm"),
                "delta_cka": mean_profile(runs, "delta_cka"),
            },
        }
        for metric in (*metrics, "retention"):
            per_seed = {r["seed"]: r["accuracy"].get(metric) for r in runs if r["accuracy"].get(metric) is not None}
            row[metric] = {"per_seed": per_seed, **summary(list(per_seed.values()))}
        row["forgetting"] = forgetting(row["retention"]["per_seed"], source_summary(sources or {}), regime)
        table.append(row)
    return table


def _paired_rows(table: list[dict], metrics: tuple[str, ...]) -> list[dict]:
    """Each strategy against the reference, paired by seed, per regime and metric."""
    paired_rows = []
    for row in table:
        ref = next((r for r in table if r["regime"] == row["regime"] and r["strategy"] == REFERENCE), None)
        if ref is None or row["strategy"] == REFERENCE:
            continue
        for metric in metrics:
            diff = paired(ref[metric]["per_seed"], row[metric]["per_seed"])
            paired_rows.append(
                {"regime": row["regime"], "metric": metric, "comparison": f"{REFERENCE} − {row['strategy']}", **diff}
            )
    return paired_rows


def _grad_ratios(table: list[dict]) -> dict:
    """OVER / UNDER mean activation gradient per seed, for shallow and full (claim d)."""
    ratios = {}
    for strategy in ("shallow", "full"):
        under = next((r for r in table if r["regime"] == "under" and r["strategy"] == strategy), None)
        over = next((r for r in table if r["regime"] == "over" and r["strategy"] == strategy), None)
        if under and over:
            seeds = sorted(set(under["mean_activation_grad"]) & set(over["mean_activation_grad"]))
            per_seed = {s: over["mean_activation_grad"][s] / under["mean_activation_grad"][s] for s in seeds}
            ratios[strategy] = {
                "over_over_under": summary(list(per_seed.values())),
                "per_seed": per_seed,
                "under_mean": float(np.mean(list(under["mean_activation_grad"].values()))),
                "over_mean": float(np.mean(list(over["mean_activation_grad"].values()))),
            }
    return ratios
