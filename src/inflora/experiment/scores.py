"""What an arm of a comparison is scored by: one place for classifiers and causal LMs alike.

Test accuracy when every arm has it; else validation accuracy (a classifier's best epoch, or a causal
LM's option accuracy where the completions are label options); else, for instruction data without
options, the validation completion loss. Scores are "higher is better", so a loss enters as its
negative and every paired difference, interval and ranking reads the same way.
"""

from __future__ import annotations

import numpy as np

LOSS = "completion_loss"


def score_metric(arms: list[dict]) -> str:
    for metric in ("test", "validation"):
        if all(a["accuracy"].get(metric) is not None for a in arms):
            return metric
    return LOSS


def arm_score(arm: dict, metric: str) -> float | None:
    """Higher is better: an accuracy, or minus the validation completion loss."""
    if metric == LOSS:
        c = (arm.get("completion") or {}).get("validation")
        return -c["completion_loss"] if c else None
    return arm["accuracy"].get(metric)


def example_scores(arm: dict, metric: str) -> np.ndarray | None:
    """The arm's per-example scores (higher is better) on the metric's split, when kept."""
    kept = (arm.get("per_example") or {}).get("validation" if metric == LOSS else metric)
    if not kept:
        return None
    if metric == LOSS:
        return -np.asarray(kept["completion_loss"], dtype=float)
    return np.asarray(kept["correct"], dtype=float) if "correct" in kept else None


def shown(metric: str, value: float) -> float:
    """What a table shows: accuracy in %, a completion loss as itself (lower is better)."""
    return -value if metric == LOSS else 100 * value


def unit(metric: str) -> str:
    return "nats" if metric == LOSS else "%"
