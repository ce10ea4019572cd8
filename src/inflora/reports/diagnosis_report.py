"""The diagnosis report: curves, SKI terms, band, head heat-map, stability, and a plain explanation."""

from __future__ import annotations

import math
from pathlib import Path

from .document import Report, fmt
from .plots import head_heatmap, profile_figure, reliability_figure, ski_alpha
from .moe_section import add_moe_section
from .rules_section import add_rules_section


def pct(value: float) -> str:
    return f"{100 * value:.0f} %" if math.isfinite(value) else "n/a"


def _mean_finite(values) -> float:
    finite = [v for v in values if v is not None and math.isfinite(v)]
    return sum(finite) / len(finite) if finite else math.nan


def _carried_by(wrong_over_right: float) -> str:
    if wrong_over_right > 1.5:
        return "mostly by the mistakes"
    if wrong_over_right < 1 / 1.5:
        return "mostly by the right answers"
    return "by right and wrong examples alike"


def explain_output(d) -> str:
    """The output paragraph: how saturated and calibrated the predictions are, who carries the
    logit gradient p − y, and (for a classifier) how that shows up in the per-layer ‖∂L/∂h‖."""
    o = d.output
    unit = o.get("unit", "example")
    text = (
        f"On {o['predictions']} probe {unit}s the model is right {pct(o['accuracy'])} of the time with mean "
        f"confidence {fmt(o['mean_confidence'], 3)} (ECE {fmt(o['ece'], 3)}); {pct(o['share_confidence_over_0.9'])} "
        f"of predictions are made with confidence > 0.9 and {pct(o['share_confidence_over_0.99'])} with > 0.99. "
        f"The gradient at the logits is p − y: right answers send back ‖p − y‖ = {fmt(o['grad_norm_correct'], 3)} "
        f"on average, wrong ones {fmt(o['grad_norm_wrong'], 3)}. {pct(o['wrong_share'])} of predictions are wrong and "
        f"carry {pct(o['wrong_grad_share'])} of the logit gradient (Σ‖p − y‖); {pct(o['wrong_confident_share'])} of "
        f"wrong answers are made with confidence > 0.9, and they carry {pct(o['confident_wrong_grad_share'])} of it."
    )
    wrong = _mean_finite(r.get("activation_grad_norm_wrong") for r in d.layers)
    right = _mean_finite(r.get("activation_grad_norm_correct") for r in d.layers)
    if math.isfinite(wrong) and math.isfinite(right) and right > 0:
        text += (
            f" Downstream, ‖∂L/∂h‖ averaged over the layers is {fmt(wrong, 3)} on the tokens of wrong examples and "
            f"{fmt(right, 3)} on those of right ones ({fmt(wrong / right, 3)}×): the per-layer gradient profiles "
            f"are carried {_carried_by(wrong / right)}."
        )
    return text


def explain(d) -> str:
    """One paragraph, generated from the numbers, for a reader who has not read the paper."""
    if not d.inflection_layers:
        return "No inflection band could be selected: " + "; ".join(d.flags or ["the profiles were not finite"]) + "."
    ent = d.profile("attention_entropy")
    grad = d.profile("activation_grad_norm")
    lo_e = min(range(d.num_layers), key=lambda i: ent[i])
    lo_g = min(range(d.num_layers), key=lambda i: grad[i])
    band = ", ".join(map(str, d.inflection_layers))
    ratio = max(grad) / min(grad) if min(grad) > 0 else math.inf
    stable = [i for i in d.inflection_layers if d.stability[i] >= 0.8] if all(map(math.isfinite, d.stability)) else []
    widen = d.selection["parameters"].get("widen")
    how = (
        f"its peaks at layers {fmt(d.peaks)} widened by ±{widen} give"
        if widen is not None
        else f"rule {d.selection['rule']!r} gives"
    )
    return (
        f"We ran {d.config['probe_batches']} batches of target data through **{d.model}** ({d.num_layers} layers) and measured, "
        f"per layer, how peaked the attention is (entropy; low means a near one-hot attention row, whose softmax "
        f"passes almost no gradient) and how much loss gradient reaches the layer's output. Attention is most "
        f"saturated at layer {lo_e} ({fmt(ent[lo_e], 3)} nats) and the gradient is weakest at layer {lo_g} "
        f"(the strongest layer receives {fmt(ratio, 3)}× more). The SKI score combines both "
        f"(α = {ski_alpha(d)}); {how} the inflection band **{{{band}}}**, where LoRA adapters are placed. "
        + (
            f"Layers {fmt(stable)} of the band were chosen in at least 80% of bootstrap resamples of the probe batches; "
            if stable
            else "No layer of the band was chosen in 80% of bootstrap resamples, so treat the band as tentative; "
        )
        + "low stability means more probe batches are needed before trusting the choice."
    )


def entropy_note(d) -> str:
    """How the entropy column was measured, and for sampled queries that it is an estimate (with SEs)."""
    mode = d.config.get("attention", "eager")
    how = (
        "streamed beside SDPA from each layer's queries and keys"
        if mode == "streaming"
        else "read from eager attention maps"
    )
    queries = d.config.get("entropy_queries")
    if not queries or "attention_entropy_se" not in d.layers[0]:
        return f"Attention entropy was {how}, exactly over every non-padding query."
    se = max(r["attention_entropy_se"] for r in d.layers)
    return (
        f"Attention entropy was {how} and is an **estimate**: {queries} query positions per sequence were drawn "
        f"uniformly without replacement (seed {d.config.get('seed')}); the column 'entropy SE' gives each layer's "
        f"standard error (largest {fmt(se, 3)} nats). Omit --entropy-queries for the exact value."
    )


def add_output_section(rep, d) -> None:
    """Paragraph, reliability diagram and (for a classifier) each block's ‖∂L/∂h‖ on wrong vs right examples."""
    rep.heading("Output saturation").text(explain_output(d)).figure(
        reliability_figure(d.output),
        "reliability",
        "Accuracy per confidence bin (10 equal-width bins; n = predictions in the bin); bars under the diagonal "
        "are over-confident.",
    )
    if any(math.isfinite(r.get("activation_grad_norm_wrong", math.nan)) for r in d.layers):
        rep.text(
            "‖∂L/∂h‖ per block on the tokens of wrong and of right examples (the layer's value is their mix, "
            "weighted by the share of tokens in wrong examples):"
        )
        rep.table(
            [
                {
                    "layer": r["layer"],
                    "‖∂L/∂h‖": r["activation_grad_norm"],
                    "wrong": r["activation_grad_norm_wrong"],
                    "right": r["activation_grad_norm_correct"],
                    "wrong / right": _ratio(r),
                }
                for r in d.layers
            ]
        )


def _ratio(row: dict) -> float:
    right = row["activation_grad_norm_correct"]
    return row["activation_grad_norm_wrong"] / right if math.isfinite(right) and right > 0 else math.nan


def write_diagnosis_report(d, out_dir: str | Path) -> dict[str, Path]:
    rep = Report(f"inflora diagnosis — {d.model}")
    rep.text(explain(d))
    if d.flags:
        rep.heading("Warnings").text("\n".join(f"- {f}" for f in d.flags))
    if d.output.get("predictions"):
        add_output_section(rep, d)
    rep.heading("Profiles").figure(
        profile_figure(d), "profile", "Per-layer curves; the shaded layers are the chosen band; stars mark SKI peaks."
    )
    rows = [
        {
            "layer": r["layer"],
            "entropy": r["attention_entropy"],
            "entropy / log n": r["attention_entropy_norm"],
            "‖∂L/∂h‖": r["activation_grad_norm"],
            "‖∇θL‖": r["param_grad_norm"],
            "H̃": h,
            "G̃": g,
            "SKI": ski,
            "stability": s,
            "band": "●" if r["layer"] in d.inflection_layers else "",
        }
        for r, h, g, ski, s in zip(d.layers, d.entropy_term, d.grad_term, d.ski, d.stability)
    ]
    for row, r in zip(rows, d.layers):
        if "attention_entropy_se" in r:
            row["entropy SE"] = r["attention_entropy_se"]
    rep.heading("Per-layer table").table(rows).text(entropy_note(d))
    rep.text(
        f"Embeddings ‖∇θL‖ = {fmt(d.groups.get('param_grad_norm_embeddings', float('nan')))}, "
        f"head ‖∇θL‖ = {fmt(d.groups.get('param_grad_norm_head', float('nan')))}."
    )
    dormant = [k for k in d.layers[0] if k.startswith("dormant_frac_")]
    if dormant and any(math.isfinite(r[k]) for r in d.layers for k in dormant):
        rep.heading("Dormant FFN units (ReDo)").text(
            "Share of each block's feed-forward units whose mean |activation| is at most τ times the layer's mean "
            "unit (τ-dormant). Dormant units receive almost no gradient; `--remedy redo` recycles them during training."
        )
        rep.table([{"layer": r["layer"], **{f"τ = {k.split('_')[-1]}": r[k] for k in dormant}} for r in d.layers])
    if getattr(d, "moe", None):
        add_moe_section(rep, d)
    rep.heading("Attention heads").figure(
        head_heatmap(d), "heads", "Mean entropy of every head; dark cells are saturated heads."
    )
    rep.heading("Selection").table(
        [{"rule": d.selection["rule"], **d.selection["parameters"], "band": d.inflection_layers, "peaks": d.peaks}]
    )
    if getattr(d, "rules", None):
        add_rules_section(rep, d.rules, d.num_layers)
    rep.heading("Configuration").table([{k: v for k, v in d.config.items()}]).text(
        "Versions: " + ", ".join(f"{k} {v}" for k, v in d.versions.items())
    )
    return rep.write(out_dir)
