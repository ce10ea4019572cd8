"""Does a rule forget less than random blocks at equal accuracy? Each LoRA band arm against lora-random.

Per regime and arm, two paired differences over seeds: target test accuracy and forgetting (points
of source accuracy lost), arm − lora-random. A rule protects the source only when its forgetting
interval lies below zero while its accuracy interval does not lie below zero.
"""

from __future__ import annotations

from .stats import paired

CONTROL = "lora-random"


def _side(ci: list[float], n: int) -> str:
    if n < 2:
        return "n/a"
    return "below" if ci[1] < 0 else "above" if ci[0] > 0 else "includes 0"


def versus_random(table: list[dict]) -> list[dict]:
    """One row per regime × LoRA band arm (not lora-random itself) with both paired differences."""
    rows = []
    for control in (r for r in table if r["strategy"] == CONTROL):
        for row in table:
            if row["regime"] != control["regime"] or not row["strategy"].startswith("lora-") or row is control:
                continue
            acc = paired(row["test"]["per_seed"], control["test"]["per_seed"])
            drop = paired(row["forgetting"]["per_seed"], control["forgetting"]["per_seed"])
            protects = _side(drop["ci"], drop["n"]) == "below" and _side(acc["ci"], acc["n"]) != "below"
            rows.append(
                {
                    "regime": row["regime"],
                    "strategy": row["strategy"],
                    "accuracy": acc,
                    "forgetting": drop,
                    "forgets_less_at_equal_accuracy": protects,
                }
            )
    return rows


def _points(d: dict) -> str:
    if not d["n"]:
        return "n/a"
    ci = f" [{100 * d['ci'][0]:+.2f}, {100 * d['ci'][1]:+.2f}]" if d["n"] > 1 else ""
    return f"{100 * d['mean']:+.2f}{ci}"


def add_versus_random_section(rep, rows: list[dict], label: str) -> None:
    if not rows:
        return
    rep.heading("Forgetting against random blocks at the same budget")
    rep.text(
        f"Arm − {CONTROL}, paired over seeds (points, 95% t-interval): {label} test accuracy and SST-2 "
        "forgetting (negative = forgets less). *protects* when the forgetting interval lies below zero and the "
        "accuracy interval does not."
    )
    rep.table(
        [
            {
                "regime": r["regime"].upper(),
                "arm": r["strategy"],
                f"Δ {label} test": _points(r["accuracy"]),
                "Δ forgetting": _points(r["forgetting"]),
                "protects": "yes" if r["forgets_less_at_equal_accuracy"] else "no",
            }
            for r in rows
        ]
    )
    winners = [f"{r['strategy']} ({r['regime'].upper()})" for r in rows if r["forgets_less_at_equal_accuracy"]]
    rep.text("Arms that forget less than random blocks at no loss of accuracy: " + (", ".join(winners) or "none") + ".")
