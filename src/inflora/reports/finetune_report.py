"""The fine-tuning report: training curves, gradient profiles during training, ΔCKA, band shaded."""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np

from .document import Report, fmt
from .plots import layer_profiles_figure


def _curves(m: dict):
    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 3.6))
    steps = [r["step"] for r in m["grad_profile"]]
    a.plot(steps, [r["loss"] for r in m["grad_profile"]], ".-")
    a.set_xlabel("step")
    a.set_ylabel("training loss (logged steps)")
    hist = m["history"]
    causal = all("validation" in h for h in hist) and hist
    b.plot(
        [h["epoch"] for h in hist],
        [h["validation"]["completion_loss"] if causal else h["validation_accuracy"] for h in hist],
        "o-",
    )
    b.set_xlabel("epoch")
    b.set_ylabel("validation completion loss" if causal else "validation accuracy")
    fig.tight_layout()
    return fig


SATURATION_CURVES = (
    ("accuracy", "accuracy"),
    ("mean_confidence", "mean confidence"),
    ("share_confidence_over_0.9", "share with confidence > 0.9"),
    ("mean_grad_norm", "mean ‖p − y‖ (gradient at the logits)"),
    ("confident_wrong_grad_share", "share of ‖p − y‖ from wrong answers with confidence > 0.9"),
)


def saturation_figure(m: dict):
    """Output saturation of the logged training batches over steps (train mode, the step's own forward)."""
    rows = [r for r in m["grad_profile"] if r.get("output")]
    if not rows:
        return None
    fig, ax = plt.subplots(figsize=(7.5, 4))
    steps = [r["step"] for r in rows]
    for key, label in SATURATION_CURVES:
        ax.plot(steps, [r["output"].get(key, float("nan")) for r in rows], ".-", label=label)
    ax.set_xlabel("step")
    ax.set_ylim(-0.02, 1.45)
    ax.set_title("output saturation on the logged training batches", fontsize=10)
    ax.legend(fontsize=7, loc="upper right")
    fig.tight_layout()
    return fig


def grad_profile_snapshots(m: dict, key: str, snapshots: int = 4) -> dict[str, list[float]]:
    rows = m["grad_profile"]
    if not rows:
        return {}
    picks = sorted({int(i) for i in np.linspace(0, len(rows) - 1, min(snapshots, len(rows)))})
    return {f"step {rows[i]['step']}": rows[i][key] for i in picks}


def mean_profile(m: dict, key: str) -> list[float]:
    rows = [r[key] for r in m["grad_profile"]]
    return np.nanmean(np.array(rows, dtype=float), axis=0).tolist() if rows else []


def write_finetune_report(m: dict, out_dir: str | Path) -> dict:
    """report.md/.html of one fine-tuning run: what was adapted and how it went, the completion loss
    (causal LM), the curves, the gradient flow, output saturation and where representations changed."""
    band = m.get("band") or []
    rep = Report(f"inflora fine-tuning — {m['strategy']} on {m['config']['task']}")
    _summary(rep, m, band)
    if m.get("completion"):
        rep.heading("Completion loss (causal LM, loss on completion tokens only)")
        rows = (
            [{"split": "validation, before training", **m["completion_before"]}] if m.get("completion_before") else []
        )
        rep.table(rows + [{"split": name, **scores} for name, scores in m["completion"].items()])
    rep.heading("Training curves").figure(_curves(m), "curves")
    _gradient_flow(rep, m, band)
    saturation = saturation_figure(m)
    if saturation is not None:
        rep.heading("Output saturation during training")
        rep.text(
            "The gradient at the logits is p − y: as the model grows confident and right, ‖p − y‖ and with it every "
            "gradient below shrink; confident mistakes keep it large. Numbers of each logged step's own batch."
        )
        rep.figure(saturation, "saturation")
    rep.heading("Where representations changed (ΔCKA, start → end)")
    rep.text(
        "ΔCKA = 1 − CKA of pooled block outputs on a fixed probe set: changes in upper layers mean feature "
        "recombination, changes in lower layers mean low-level features were rebuilt."
    )
    rep.figure(layer_profiles_figure({m["strategy"]: m["delta_cka"]}, "ΔCKA per layer", "1 − CKA", band), "delta_cka")
    rows = [
        {"layer": i, "mean ‖∂L/∂h‖": a, "mean ‖∇θL‖": p, "ΔCKA": c, "adapted": "●" if i in m["layers"] else ""}
        for i, (a, p, c) in enumerate(
            zip(mean_profile(m, "activation_grad_norm"), mean_profile(m, "param_grad_norm"), m["delta_cka"])
        )
    ]
    rep.table(rows)
    rep.heading("History").table(m["history"])
    return rep.write(out_dir)


def _summary(rep: Report, m: dict, band: list[int]) -> None:
    """One paragraph: the blocks, the trainable share, the accuracy, speed, memory and placement."""
    acc = ", ".join(f"{k} {fmt(v)}" for k, v in m["accuracy"].items())
    rep.text(
        f"Strategy **{m['strategy']}** adapted blocks {fmt(m['layers'])} with {m['trainable_params']:,} of "
        f"{m['total_params']:,} parameters trainable ({100 * m['trainable_params'] / m['total_params']:.2f}%), "
        f"lr {m['lr']}. Best epoch {m['best_epoch']}; accuracy: {acc}. "
        f"{m['steps']} steps in {m['train_seconds']:.1f} s ({m['steps_per_second']:.2f} steps/s), peak RSS {m['peak_rss_mb']:.0f} MB."
        + (
            f" Ran on {m['device']} in {m['precision']} with {m['world_size']} process(es), global batch "
            f"{m['global_batch_size']} ({m['grad_accum']} micro-batch(es) per step)."
            if "device" in m
            else ""
        )
        + (
            f" The shaded layers are the inflection band {fmt(band)} ({m['band_info'].get('source', '')})."
            if band
            else ""
        )
    )


def _gradient_flow(rep: Report, m: dict, band: list[int]) -> None:
    """Activation- and parameter-gradient norms (and attention entropy) per layer at a few logged steps."""
    rep.heading("Gradient flow during training")
    rep.text(
        "Does the loss signal reach the low layers (activation gradients), and do the adapted layers receive "
        "updates (parameter gradients)? Curves at a few logged steps:"
    )
    rep.figure(
        layer_profiles_figure(
            grad_profile_snapshots(m, "activation_grad_norm"),
            "activation-gradient norm ‖∂L/∂h‖",
            "norm",
            band,
            log=True,
        ),
        "activation_grads",
    )
    rep.figure(
        layer_profiles_figure(
            grad_profile_snapshots(m, "param_grad_norm"), "parameter-gradient norm ‖∇θL‖", "norm", band
        ),
        "param_grads",
    )
    if m["grad_profile"] and "attention_entropy" in m["grad_profile"][0]:
        rep.figure(
            layer_profiles_figure(grad_profile_snapshots(m, "attention_entropy"), "attention entropy", "nats", band),
            "attention_entropy",
        )
