"""Output saturation of the source checkpoints, and why OVER's gradients differ from UNDER's.

Each source checkpoint (UNDER, OVER) is probed on RT validation (the band's diagnosis) and on RT
train (what target training starts from). A classifier's diagnosis splits every block's ‖∂L/∂h‖
between the tokens of wrong and right examples, so the layer-mean gradient is exactly
G = w·G_wrong + (1 − w)·G_right (w = the share of tokens in wrong examples). The OVER − UNDER
difference then splits exactly (midpoint / Shapley form, bars = the mean of the two regimes):

    ΔG = Δw·(Ḡ_wrong − Ḡ_right)  +  w̄·ΔG_wrong  +  (1 − w̄)·ΔG_right
         share of wrong examples   gradient per wrong   gradient per right

The same identity at the logits uses the output section (per example: wrong share, mean ‖p − y‖ of
wrong and right examples).
"""

from __future__ import annotations

import math

import numpy as np

SPLITS = ("validation", "train")
OUTPUT_KEYS = (
    "accuracy",
    "mean_confidence",
    "share_confidence_over_0.9",
    "share_confidence_over_0.99",
    "ece",
    "grad_norm_correct",
    "grad_norm_wrong",
    "wrong_share",
    "wrong_confident_share",
    "confident_wrong_grad_share",
)


def _layer_mean(layers: list[dict], key: str) -> float:
    values = [r.get(key, math.nan) for r in layers]
    values = [math.nan if v is None else v for v in values]
    return float(np.mean(values)) if values else math.nan


def gradient_parts(diagnosis: dict) -> dict:
    """(G, w, G_wrong, G_right) of one diagnosis: layer means of ‖∂L/∂h‖ and of its split."""
    layers = diagnosis.get("layers", [])
    return {
        "total": _layer_mean(layers, "activation_grad_norm"),
        "share": _layer_mean(layers, "wrong_token_share"),
        "wrong": _layer_mean(layers, "activation_grad_norm_wrong"),
        "right": _layer_mean(layers, "activation_grad_norm_correct"),
    }


def logit_parts(diagnosis: dict) -> dict:
    """The same four numbers at the logits: mean ‖p − y‖, wrong share, ‖p − y‖ of wrong / right."""
    o = diagnosis.get("output") or {}
    return {
        "total": o.get("mean_grad_norm", math.nan),
        "share": o.get("wrong_share", math.nan),
        "wrong": o.get("grad_norm_wrong", math.nan),
        "right": o.get("grad_norm_correct", math.nan),
    }


def decompose(under: dict, over: dict) -> dict:
    """OVER − UNDER of G = w·G_wrong + (1 − w)·G_right, split into three exact terms (see module doc).
    A regime without wrong (or right) examples has no G_wrong (G_right): the terms are then NaN."""
    delta = _f(over["total"]) - _f(under["total"])
    w = (_f(under["share"]) + _f(over["share"])) / 2
    a = (_f(under["wrong"]) + _f(over["wrong"])) / 2
    b = (_f(under["right"]) + _f(over["right"])) / 2
    terms = {
        "share_of_wrong": (_f(over["share"]) - _f(under["share"])) * (a - b),
        "gradient_per_wrong": w * (_f(over["wrong"]) - _f(under["wrong"])),
        "gradient_per_right": (1 - w) * (_f(over["right"]) - _f(under["right"])),
    }
    explained = terms["share_of_wrong"] + terms["gradient_per_wrong"]
    return {
        "under": under,
        "over": over,
        "difference": delta,
        "ratio": _f(over["total"]) / _f(under["total"]) if _f(under["total"]) else math.nan,
        **terms,
        "wrong_fraction": explained / delta if delta and math.isfinite(explained) else math.nan,
    }


def _f(value) -> float:
    return math.nan if value is None else float(value)


def training_parts(run: dict) -> dict | None:
    """(G, w, G_wrong, G_right) of a target run: means over its logged steps (and layers); None when
    the profile has no wrong/right split (older caches)."""
    rows = [r for r in run.get("grad_profile", []) if r.get("activation_grad_norm_wrong") is not None]
    if not rows:
        return None

    def mean(key):
        return float(np.nanmean(np.array([r[key] for r in rows], dtype=float)))

    return {
        "total": mean("activation_grad_norm"),
        "share": mean("wrong_token_share"),
        "wrong": mean("activation_grad_norm_wrong"),
        "right": mean("activation_grad_norm_correct"),
    }


def training_decomposition(targets: list[dict]) -> list[dict]:
    """The decomposition during target training (``shallow``, ``full``) per seed. Means over steps
    do not multiply exactly (w and G_wrong vary together from step to step): ``residual`` is what
    the three terms leave of the difference."""
    runs = {(t["regime"], t["strategy"], t["seed"]): t for t in targets}
    out = []
    for (regime, strategy, seed), run in sorted(runs.items()):
        over = runs.get(("over", strategy, seed))
        if regime != "under" or strategy not in ("shallow", "full") or over is None:
            continue
        parts = training_parts(run), training_parts(over)
        if None in parts:
            continue
        d = decompose(*parts)
        d["residual"] = d["difference"] - d["share_of_wrong"] - d["gradient_per_wrong"] - d["gradient_per_right"]
        out.append(
            {
                "seed": seed,
                "strategy": strategy,
                "activation": d,
                "wrong_confident_share": {
                    g: _mean_output(r, "wrong_confident_share") for g, r in (("under", run), ("over", over))
                },
            }
        )
    return out


def _mean_output(run: dict, key: str) -> float:
    values = [r["output"].get(key) for r in run.get("grad_profile", []) if r.get("output")]
    values = [v for v in values if v is not None and math.isfinite(v)]
    return float(np.mean(values)) if values else math.nan


def saturation_summary(diagnoses: dict, train_diagnoses: dict | None, targets: list[dict] | None = None) -> dict:
    """Per seed and split: each regime's output numbers, and the two decompositions; and the
    decomposition during target training."""
    by_split = {"validation": diagnoses, "train": train_diagnoses or {}}
    out: dict = {"outputs": [], "decomposition": [], "training": training_decomposition(targets or [])}
    for split, found in by_split.items():
        seeds = sorted({int(k.split("/")[1]) for k in found})
        for seed in seeds:
            pair = {g: found.get(f"{g}/{seed}") for g in ("under", "over")}
            for regime, d in pair.items():
                if d and d.get("output"):
                    out["outputs"].append(
                        {
                            "seed": seed,
                            "split": split,
                            "regime": regime,
                            **{k: d["output"].get(k, math.nan) for k in OUTPUT_KEYS},
                        }
                    )
            if all(pair.values()):
                out["decomposition"].append(
                    {
                        "seed": seed,
                        "split": split,
                        "activation": decompose(gradient_parts(pair["under"]), gradient_parts(pair["over"])),
                        "logits": decompose(logit_parts(pair["under"]), logit_parts(pair["over"])),
                    }
                )
    return out


def judge_confident_mistakes(res: dict) -> dict:
    """Claim (g): confident mistakes explain why OVER's ‖∂L/∂h‖ exceeds UNDER's. Judged on RT train
    (what target training starts from) at the source checkpoints, per seed: *supported* when OVER's
    gradient is larger, the wrong examples' two terms carry at least half of the difference, OVER
    makes a larger share of its mistakes with confidence > 0.9 and OVER also sends more gradient at
    the logits (mean ‖p − y‖); *not supported* when OVER's gradient is larger but one of the others
    fails (e.g. OVER sends *less* logit gradient, so the network's transmission ‖∂L/∂h‖ / ‖p − y‖,
    not the mistakes, makes the difference); *inconclusive* otherwise (mixed seeds, OVER not larger,
    no split)."""
    claim = "confident mistakes on RT explain why OVER's activation gradients are larger than UNDER's"
    sat = res.get("saturation") or {}
    rows = [r for r in sat.get("decomposition", []) if r["split"] == "train"]
    if not rows:
        return {
            "id": "g",
            "claim": claim,
            "verdict": "inconclusive",
            "evidence": "no RT-train diagnosis of both regimes",
        }
    outputs = {(r["seed"], r["regime"]): r for r in sat["outputs"] if r["split"] == "train"}
    verdicts, evidence = [], []
    for r in rows:
        act, logit, s = r["activation"], r["logits"], r["seed"]
        conf = {g: outputs.get((s, g), {}).get("wrong_confident_share", math.nan) for g in ("under", "over")}
        larger, frac = act["difference"] > 0, act["wrong_fraction"]
        more_confident = _f(conf["over"]) > _f(conf["under"])
        transmission = act["ratio"] / logit["ratio"] if logit["ratio"] else math.nan
        if not (larger and math.isfinite(frac)):
            verdicts.append("inconclusive")
        elif frac >= 0.5 and more_confident and logit["difference"] > 0:
            verdicts.append("supported")
        else:
            verdicts.append("not supported")
        evidence.append(
            f"seed {s}: OVER/UNDER mean ‖∂L/∂h‖ = {act['ratio']:.3g}; of the difference {act['difference']:.3g}, "
            f"share of wrong examples {act['share_of_wrong']:+.3g}, gradient per wrong {act['gradient_per_wrong']:+.3g}, "
            f"per right {act['gradient_per_right']:+.3g} (wrong examples: {_pct(frac)}); wrong answers made with "
            f"confidence > 0.9: UNDER {_pct(conf['under'])}, OVER {_pct(conf['over'])}; at the logits OVER/UNDER mean "
            f"‖p − y‖ = {logit['ratio']:.3g}, so the network passes {transmission:.3g}× more ‖∂L/∂h‖ per unit of ‖p − y‖"
        )
    v = verdicts[0] if len(set(verdicts)) == 1 else "inconclusive"
    return {"id": "g", "claim": claim, "verdict": v, "evidence": "; ".join(evidence)}


def _pct(value) -> str:
    return f"{100 * value:.0f} %" if value is not None and math.isfinite(value) else "n/a"


def add_saturation_section(rep, sat: dict) -> None:
    """The report's section: output numbers per checkpoint and split, and both decompositions."""
    rep.heading("Output saturation of the source checkpoints (RT train and validation)")
    if not sat or not sat.get("outputs"):
        rep.text(
            "_No output numbers: these units were computed before the output diagnostic existed; a fresh run "
            "(or removing the cached `diagnose-*` units) adds them._"
        )
        return
    _outputs_table(rep, sat["outputs"])
    _decomposition_table(rep, sat["decomposition"])
    if sat.get("training"):
        _training_table(rep, sat["training"])


def _outputs_table(rep, outputs: list[dict]) -> None:
    """Per source checkpoint and split: accuracy, confidence, calibration and the gradient at the logits."""
    rep.text(
        "Each source checkpoint probed on RT (the diagnosis batches, before any target training). The gradient at "
        "the logits is p − y; *conf* is the max softmax probability; *confident-wrong grad* is the share of "
        "Σ‖p − y‖ carried by wrong answers made with confidence > 0.9."
    )
    rep.table(
        [
            {
                "seed": r["seed"],
                "split": r["split"],
                "regime": r["regime"].upper(),
                "accuracy": _pct(r["accuracy"]),
                "mean conf": r["mean_confidence"],
                "conf > 0.9": _pct(r["share_confidence_over_0.9"]),
                "conf > 0.99": _pct(r["share_confidence_over_0.99"]),
                "ECE": r["ece"],
                "‖p − y‖ right": r["grad_norm_correct"],
                "‖p − y‖ wrong": r["grad_norm_wrong"],
                "wrong": _pct(r["wrong_share"]),
                "wrong with conf > 0.9": _pct(r["wrong_confident_share"]),
                "confident-wrong grad": _pct(r["confident_wrong_grad_share"]),
            }
            for r in outputs
        ],
        digits=3,
    )


def _decomposition_table(rep, decomposition: list[dict]) -> None:
    """OVER − UNDER split exactly into the share of wrong examples and the gradient per wrong / right one."""
    rep.text(
        "Decomposition of OVER − UNDER in the layer-mean ‖∂L/∂h‖ (and, below it, in the mean ‖p − y‖ at the logits) "
        "into the share of wrong examples, the gradient per wrong example and the gradient per right example "
        "(exact: the three terms add up to the difference; see `inflora.experiment.saturation`)."
    )
    rows = []
    for r in decomposition:
        for level in ("activation", "logits"):
            d = r[level]
            rows.append(
                {
                    "seed": r["seed"],
                    "split": r["split"],
                    "at": "‖∂L/∂h‖" if level == "activation" else "‖p − y‖",
                    "UNDER": d["under"]["total"],
                    "OVER": d["over"]["total"],
                    "OVER/UNDER": d["ratio"],
                    "share of wrong": d["share_of_wrong"],
                    "per wrong": d["gradient_per_wrong"],
                    "per right": d["gradient_per_right"],
                    "wrong examples' part": _pct(d["wrong_fraction"]),
                }
            )
    rep.table(rows, digits=3)


def _training_table(rep, training: list[dict]) -> None:
    """The same decomposition during target training, with what the three terms leave (residual)."""
    rep.text(
        "The same split during target training (means over the logged steps and layers; the steps' own "
        "training batches, dropout on). *residual*: what the three terms leave, because the share of wrong "
        "examples and their gradient vary together from step to step."
    )
    rep.table(
        [
            {
                "seed": r["seed"],
                "strategy": r["strategy"],
                "UNDER": r["activation"]["under"]["total"],
                "OVER": r["activation"]["over"]["total"],
                "OVER/UNDER": r["activation"]["ratio"],
                "share of wrong": r["activation"]["share_of_wrong"],
                "per wrong": r["activation"]["gradient_per_wrong"],
                "per right": r["activation"]["gradient_per_right"],
                "residual": r["activation"]["residual"],
                "wrong with conf > 0.9 (UNDER / OVER)": f"{_pct(r['wrong_confident_share']['under'])} / "
                f"{_pct(r['wrong_confident_share']['over'])}",
            }
            for r in training
        ],
        digits=3,
    )
