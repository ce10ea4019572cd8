"""results.json / results.md / results.html for the SST-2 → RT and SST-2 → TREC experiments."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from ..io import atomic_write_json, versions
from ..reports.document import Report, fmt
from ..reports.plots import layer_profiles_figure
from .claims import judge
from .forgetting import add_versus_random_section
from .results import METRICS
from .transfers import DEFAULT, get_transfer
from .saturation import add_saturation_section


def _acc(cell: dict) -> str:
    if not cell or cell["n"] == 0:
        return "n/a"
    lo, hi = cell["ci"]
    ci = f" [{100 * lo:.2f}, {100 * hi:.2f}]" if cell["n"] > 1 else ""
    sd = f" ± {100 * cell['sd']:.2f}" if cell["n"] > 1 else ""
    return f"{100 * cell['mean']:.2f}{sd}{ci}"


def _trainable(row: dict) -> str:
    """The count, or the mean and range when the band (and so the count) differs between seeds."""
    counts = list(row.get("trainable_per_seed", {}).values()) or [row["trainable_params"]]
    if len(set(counts)) == 1:
        return f"{counts[0]:,}"
    return f"{row['trainable_params']:,} (mean; {min(counts):,}–{max(counts):,})"


def _wall_time(meta: dict) -> str:
    """This invocation's wall time, and the total over every invocation on this folder (resumes)."""
    text = (
        f"Wall time of this invocation {meta['wall_seconds'] / 60:.1f} min; units computed now "
        f"{meta['computed_units']}, from cache {meta['cached_units']}."
    )
    runs = meta.get("invocations") or []
    if len(runs) > 1:
        total = sum(r["wall_seconds"] for r in runs)
        text += f" All {len(runs)} invocations on this folder (resumes and re-renders): {total / 60:.1f} min in total."
    return text


def common_band(res: dict, regime: str) -> list[int]:
    bands = [tuple(b[regime]["band"]) for b in res["bands"].values() if regime in b]
    return list(Counter(bands).most_common(1)[0][0]) if bands else []


def _metric_name(metric: str, label: str) -> str:
    return f"full {label} test" if metric == "test" else f"decontaminated {label} test"


def _add_rule_section(rep, res: dict, label: str) -> None:
    """Which selection rule, per regime: the LoRA band arms judged like ``inflora compare``."""
    recs = res.get("rule_recommendations", {})
    if not any(recs.values()):
        return
    rep.heading("Which rule? The LoRA band arms as selection rules at the same K")
    rep.text(
        "lora-inflection is SKI, lora-random the random control, lora-all every block, lora-<rule> a peer rule. "
        "A rule *wins* only when every other arm is below it by a paired t-test over seeds at Holm-corrected "
        "p < 0.05; otherwise the cheapest arm that cannot be told apart from the best suffices (inputs: nothing "
        "< weights < a forward pass < a backward pass; then trainable parameters)."
    )
    for metric, by_regime in recs.items():
        for regime, rec in by_regime.items():
            rep.text(f"**{regime.upper()}, {_metric_name(metric, label)}:** {rec['text']}.")


def _results_table(rep, res: dict, label: str, metrics: list[str]) -> None:
    rep.text(
        f"Accuracy in % on the {label} test split (mean ± sd over seeds [95% t-interval])."
        + (
            " *decontaminated* drops the test sentences that also occur in SST-2 train (761 of 1066 on the full test)."
            if "test_decontaminated" in metrics
            else ""
        )
    )
    rows = [
        {
            "regime": r["regime"].upper(),
            "strategy": r["strategy"],
            "trainable": _trainable(r),
            "layers": r["layers"],
            **{f"{label} test" + ("" if m == "test" else " (decontaminated)"): _acc(r[m]) for m in metrics},
            "step s": r["step_seconds"],
        }
        for r in res["table"]
    ]
    rep.heading("Results").table(rows)


def render(res: dict, meta: dict, out: Path) -> dict:
    """results.json (the aggregate, the claims judged, the run's meta) and the report beside it:
    results, paired differences, rules, forgetting, gradients, saturation, sources, bands, claims
    and profiles, in that order."""
    transfer = get_transfer(meta.get("transfer", DEFAULT))
    label, metrics = transfer.label, res.get("metrics", list(METRICS))
    # Claim (g) reads the source head's confident mistakes on the target: a new head has none to read.
    claims = {m: [c for c in judge(res, m) if not (transfer.new_head and c["id"] == "g")] for m in metrics}
    payload = {**res, "claims": claims, "meta": meta, "versions": versions()}
    atomic_write_json(out / "results.json", payload)
    rep = _header(meta, label)
    _results_table(rep, res, label, metrics)
    _paired_section(rep, res)
    _add_rule_section(rep, res, label)
    _forgetting_section(rep, res, label, transfer.new_head)
    add_versus_random_section(rep, res.get("versus_random", []), label)
    _gradient_section(rep, res)
    if transfer.new_head:
        rep.text(f"_No output-saturation section: the source checkpoints meet {label} through a new, random head._")
    else:
        add_saturation_section(rep, res.get("saturation"))
    _sources_section(rep, res)
    _bands_section(rep, res, label)
    for metric in metrics:
        rep.heading(f"Claims ({_metric_name(metric, label)})")
        rep.table(
            [
                {"claim": f"({c['id']}) {c['claim']}", "verdict": c["verdict"], "evidence": c["evidence"]}
                for c in claims[metric]
            ]
        )
    _profiles_section(rep, res)
    return rep.write(out, stem="results")


def _header(meta: dict, label: str) -> Report:
    """The title, the command that made the report, its profile and seeds, and the budget if any."""
    target = "Rotten Tomatoes" if label == "RT" else label
    rep = Report(f"SST-2 → {target}: inflection-layer LoRA vs other strategies")
    rep.text(
        f"Command: `{meta['command']}`  \nProfile **{meta['profile']['name']}** ({meta['profile']['model']}), seeds "
        f"{fmt(meta['seeds'])}. " + _wall_time(meta)
    )
    if meta.get("budget_layers"):
        rep.text(
            f"Budget: every band strategy trains **K = {meta['budget_layers']}** blocks (lora-inflection: SKI's band "
            "trimmed or extended to K by SKI score; lora-random: K random blocks; lora-<rule>: the rule's K blocks). "
            "SKI's own band per seed is in the Bands table below."
        )
    return rep


def _paired_section(rep: Report, res: dict) -> None:
    """Each arm against lora-inflection, seed by seed (the seeds pair the runs)."""
    rep.heading("Paired differences against lora-inflection (points; positive = lora-inflection better)")
    rep.table(
        [
            {
                "regime": p["regime"].upper(),
                "metric": p["metric"],
                "comparison": p["comparison"],
                "per seed": ", ".join(f"{s}: {100 * v:+.2f}" for s, v in p["per_seed"].items()),
                "mean": f"{100 * p['mean']:+.2f}" if p["n"] else "n/a",
                "95% CI": f"[{100 * p['ci'][0]:+.2f}, {100 * p['ci'][1]:+.2f}]" if p["n"] > 1 else "n/a",
            }
            for p in res["paired"]
        ]
    )


def _forgetting_section(rep: Report, res: dict, label: str, new_head: bool) -> None:
    """SST-2 accuracy after target training, when the runs scored it."""
    if not any(r["retention"]["n"] for r in res["table"]):
        return
    rep.heading(f"Forgetting: SST-2 validation accuracy after {label} fine-tuning")
    rep.text(
        "How much of the source task survives target training (the concern of KappaTune-style rules): the "
        "SST-2 validation accuracy of each target run's final model, and the drop from its source checkpoint "
        "(points; positive = forgotten)."
        + (
            " The target has its own new head, so SST-2 is scored by the "
            "adapted backbone (LoRA merged) under the source checkpoint's own head (pooler and classifier)."
            if new_head
            else ""
        )
    )
    rep.table(
        [
            {
                "regime": r["regime"].upper(),
                "strategy": r["strategy"],
                "layers": r["layers"],
                "SST-2 after": _acc(r["retention"]),
                "drop (points)": _acc(r["forgetting"]),
            }
            for r in res["table"]
        ]
    )


def _gradient_section(rep: Report, res: dict) -> None:
    """The paper's gradient-suppression claim, OVER against UNDER per strategy."""
    rep.heading("Gradient suppression: OVER vs UNDER")
    rep.table(
        [
            {
                "strategy": s,
                "UNDER mean ‖∂L/∂h‖": f"{r['under_mean']:.3g}",
                "OVER mean ‖∂L/∂h‖": f"{r['over_mean']:.3g}",
                "OVER/UNDER": f"{r['over_over_under']['mean']:.3g}",
                "per seed": fmt(list(r["per_seed"].values()), 3),
            }
            for s, r in res["grad_ratio"].items()
        ]
    )
    rep.text(
        "The review of the paper reports ≈1.9e-6 (OVER) vs 3.5e-5 (UNDER) under shallow unfreezing, a ratio of ≈0.05."
    )


def _sources_section(rep: Report, res: dict) -> None:
    """The source checkpoints (UNDER and OVER) each target run starts from."""
    if not res.get("sources"):
        return
    rep.heading("Source runs (SST-2 full fine-tuning; accuracy on SST-2 validation)")
    rep.table(
        [
            {
                "seed": seed,
                **{
                    f"{g.upper()} (epoch {s[g]['epoch']})": f"{100 * s[g]['sst2_validation_accuracy']:.2f} % "
                    f"(train loss {s[g]['train_loss']:.3f})"
                    for g in ("under", "over")
                },
            }
            for seed, s in sorted(res["sources"].items())
        ]
    )


def _bands_section(rep: Report, res: dict, label: str) -> None:
    """Each source checkpoint's band and its stability on the target's validation split."""
    rep.heading(f"Bands (diagnosis of each source checkpoint on {label} validation)")
    rep.table(
        [
            {
                "seed": s,
                **{f"{g.upper()} band": b[g]["band"] for g in ("under", "over") if g in b},
                **{f"{g.upper()} stability": fmt(b[g]["stability"], 2) for g in ("under", "over") if g in b},
            }
            for s, b in sorted(res["bands"].items())
        ]
    )


def _profiles_section(rep: Report, res: dict) -> None:
    """Gradient and ΔCKA profiles during target training, one figure per regime and quantity."""
    rep.heading("Profiles during target training (mean over seeds; shaded: the most common band)")
    for regime in ("under", "over"):
        rows_r = [r for r in res["table"] if r["regime"] == regime]
        if not rows_r:
            continue
        band = common_band(res, regime)
        for key, title, log in (
            ("activation_grad_norm", "activation-gradient norm", True),
            ("param_grad_norm", "parameter-gradient norm", False),
            ("delta_cka", "ΔCKA source → target", False),
        ):
            fig = layer_profiles_figure(
                {r["strategy"]: r["profiles"][key] for r in rows_r}, f"{regime.upper()}: {title}", title, band, log
            )
            rep.figure(fig, f"{regime}_{key}")
