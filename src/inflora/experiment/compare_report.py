"""compare.json / compare.md / compare.html: the matched-budget tournament and its recommendation."""

from __future__ import annotations

from pathlib import Path

from ..io import atomic_write_json, versions
from ..reports.document import Report, fmt
from ..reports.rules_section import add_rules_section
from .compare_results import METRICS
from .report import _acc, _wall_time
from .scores import LOSS


def _blocks(row: dict) -> str:
    sets = {tuple(v) for v in row["layers"].values()}
    return (
        fmt(list(sets.pop()))
        if len(sets) == 1
        else "per seed: " + "; ".join(f"{s} {fmt(v)}" for s, v in sorted(row["layers"].items()))
    )


def _diff(d: dict, scale: float = 100, digits: int = 2) -> str:
    """A paired difference of scores (points of accuracy, or nats of completion loss: ``scale`` 1)."""
    if d["n"] < 2:
        return f"{scale * d['mean']:+.{digits}f}" if d["n"] else "n/a"
    return f"{scale * d['mean']:+.{digits}f} [{scale * d['ci'][0]:+.{digits}f}, {scale * d['ci'][1]:+.{digits}f}]"


def _interval(ci: list[float] | None, scale: float, digits: int) -> str:
    return "n/a" if not ci else f"[{scale * ci[0]:+.{digits}f}, {scale * ci[1]:+.{digits}f}]"


def _loss(cell: dict) -> str:
    """A completion-loss cell (the scores are its negative): mean ± sd [interval]."""
    if not cell or cell["n"] == 0:
        return "n/a"
    if cell["n"] == 1:
        return f"{-cell['mean']:.4f}"
    return f"{-cell['mean']:.4f} ± {cell['sd']:.4f} [{-cell['ci'][1]:.4f}, {-cell['ci'][0]:.4f}]"


def _p(p) -> str:
    return "n/a" if p is None or p != p else ("< 0.001" if p < 0.001 else f"{p:.3f}")


def render_compare(res: dict, diagnosis: dict, meta: dict, out: Path) -> dict:
    """compare.json, then compare.md/.html: the recommendation, the scores, the paired differences,
    the rules side by side and the configuration."""
    out = Path(out)
    atomic_write_json(
        out / "compare.json", {**res, "diagnosis_rules": diagnosis["rules"], "meta": meta, "versions": versions()}
    )
    plan = meta["plan"]
    rep = Report(f"Which blocks to adapt? {len(res['table'])} rules on {plan['model']} / {plan['task']}")
    _intro(rep, res, diagnosis, meta)
    _scores(rep, res)
    _paired(rep, res, len(plan["seeds"]))
    add_rules_section(rep, diagnosis["rules"], diagnosis["num_layers"])
    if "random" in diagnosis["rules"]["rules"]:
        rep.text(
            "`random` above is the diagnosis' own draw; each training seed draws its own K blocks (see the "
            "blocks column of the accuracy table)."
        )
    rep.heading("Configuration").table([{k: v for k, v in plan.items() if k not in ("rules", "seeds")}]).text(
        "Versions: " + ", ".join(f"{k} {v}" for k, v in versions().items())
    )
    return rep.write(out, stem="compare")


def _intro(rep: Report, res: dict, diagnosis: dict, meta: dict) -> None:
    """The command, its wall time, the recommendation and the budget every arm was given."""
    plan, k = meta["plan"], diagnosis["rules"]["k"]
    budget = diagnosis["rules"]["budget"]
    rep.text(f"Command: `{meta['command']}`  \n" + _wall_time(meta))
    rep.heading("Recommendation").text(res["recommendation"]["text"] + ".")
    rep.text(
        f"Budget: K = {k} blocks per rule (`all`: every block)"
        + (
            f", rank matched to {budget['params']:,} LoRA parameters per arm"
            if budget.get("params")
            else f", LoRA rank {plan['lora_r']}"
        )
        + f"; SKI's own band has {len(diagnosis['inflection_layers'])} blocks "
        f"({fmt(diagnosis['inflection_layers'])}). Seeds {fmt(plan['seeds'])}; {plan['epochs']} epoch(s) on "
        f"{plan['limit_train'] or 'all'} training examples; evaluation on {plan['limit_eval'] or 'all'} examples "
        "per split."
    )


def _scores(rep: Report, res: dict) -> None:
    """One row per rule, best first: blocks, sizes, step time and every metric measured."""
    metric = res["metric"]
    rep.heading(
        f"Scores (accuracy in %, completion loss in nats per token; mean ± sd over seeds [95 % t-interval]; "
        f"ranked by {metric})"
    )
    shown = [m for m in METRICS if any(r.get(m, {}).get("n") for r in res["table"])]
    names = {
        "test": "test",
        "test_decontaminated": "test (decontaminated)",
        "validation": "validation",
        LOSS: "validation completion loss",
    }
    rep.table(
        [
            {
                "rule": r["rule"],
                "blocks": _blocks(r),
                "r": r["r"],
                "trainable": f"{r['trainable_params']:,}",
                "LoRA params": f"{r['lora_params']:,}" if r.get("lora_params") else "n/a",
                "step ms": f"{1000 * r['step_seconds']:.0f}",
                **{names[m]: (_loss if m == LOSS else _acc)(r[m]) for m in shown},
            }
            for r in sorted(res["table"], key=lambda r: -r[metric]["mean"])
        ],
        digits=3,
    )


def _paired(rep: Report, res: dict, n: int) -> None:
    """The paired differences with their intervals and Holm-corrected p, and how to read them."""
    metric = res["metric"]
    unit = "nats of completion loss, positive = lower loss" if metric == LOSS else "points"
    rep.heading(f"Paired differences ({metric}, {unit}, same seed [95 % t-interval]; negative = worse)")
    best = res["recommendation"].get("best_mean")
    if best in ("ski", "all"):
        rep.text(f"The best mean is `{best}`'s, so the differences against the best are also those against `{best}`.")
    scale, digits = (1, 4) if metric == LOSS else (100, 2)
    rep.table(
        [
            {
                "against": p["against"],
                "comparison": p["comparison"],
                "difference": _diff(p, scale, digits),
                "n": p["n"],
                "p": _p(p.get("p")),
                "p (Holm)": _p(p.get("p_holm")),
                "examples [95 %]": _interval(p.get("examples_ci"), scale, digits),
            }
            for p in res["paired"]
        ]
    )
    if n > 1:
        from scipy import stats

        rep.text(
            f"Intervals are t-intervals over seeds of the per-seed paired differences; with {n} seeds "
            f"t = {stats.t.ppf(0.975, n - 1):.2f}, so only large, consistent differences are distinguishable. "
            "`p` is the paired t-test's; `p (Holm)` corrects it within each family (against the best, against "
            "SKI, against `all`). Only the family against the best decides the recommendation. The intervals "
            "are not corrected. `examples`: a paired bootstrap over evaluation examples (2,000 resamples; "
            "the seeds pooled), which shows how much of the spread is the test set's rather than the seeds'."
        )
