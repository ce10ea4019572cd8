"""Matplotlib figures shared by the diagnosis, fine-tuning and experiment reports."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def ski_alpha(d):
    """The α SKI was computed with (files written before it was recorded keep it in the rule's parameters)."""
    return (d.selection.get("ski") or d.selection["parameters"]).get("alpha", "n/a")


def shade_band(ax, band: list[int], label: str | None = "inflection band") -> None:
    for k, layer in enumerate(sorted(band)):
        ax.axvspan(layer - 0.5, layer + 0.5, color="tab:orange", alpha=0.15, lw=0, label=label if k == 0 else None)


def _positive(values) -> bool:
    v = np.asarray(values, dtype=float)
    return bool(np.isfinite(v).all() and (v > 0).all())


def profile_figure(d) -> plt.Figure:
    """The four per-layer curves, the normalised SKI terms with peaks, and the chosen band."""
    layers = np.arange(d.num_layers)
    fig, axes = plt.subplots(2, 3, figsize=(14, 7.5))
    panels = [
        ("attention_entropy", "attention entropy (nats)", False),
        ("attention_entropy_norm", "normalised entropy H / log n", False),
        ("activation_grad_norm", "activation-gradient norm ‖∂L/∂h‖", True),
        ("param_grad_norm", "parameter-gradient norm ‖∇θL‖", True),
    ]
    for ax, (key, title, log) in zip(axes.flat, panels):
        values = d.profile(key)
        ax.plot(layers, values, "o-", color="tab:blue")
        if log and _positive(values):
            ax.set_yscale("log")
        ax.set_title(title, fontsize=10)
        shade_band(ax, d.inflection_layers)
    ax = axes.flat[4]
    ax.plot(layers, d.entropy_term, "s--", label="H̃ (low entropy → 1)")
    ax.plot(layers, d.grad_term, "^--", label="G̃ (small gradient → 1)")
    ax.plot(layers, d.ski, "o-", color="k", lw=2, label="SKI")
    if d.peaks:
        ax.plot(d.peaks, [d.ski[p] for p in d.peaks], "r*", ms=14, label="peaks")
    shade_band(ax, d.inflection_layers)
    ax.set_title(f"SKI = α·H̃ + (1−α)·G̃ (α = {ski_alpha(d)})", fontsize=10)
    ax.legend(fontsize=7)
    ax = axes.flat[5]
    ax.bar(layers, d.stability, color="tab:green")
    ax.set_ylim(0, 1.05)
    ax.set_title(
        f"stability: share of {d.selection.get('resamples', '')} bootstrap resamples choosing the layer", fontsize=9
    )
    shade_band(ax, d.inflection_layers, label=None)
    for ax in axes.flat:
        ax.set_xlabel("layer")
        ax.set_xticks(layers)
    fig.suptitle(f"{d.model}: per-layer diagnostics", fontsize=12)
    fig.tight_layout()
    return fig


def head_heatmap(d) -> plt.Figure:
    heads = np.array([row["head_entropy"] for row in d.layers], dtype=float)
    fig, ax = plt.subplots(figsize=(max(5, 0.45 * heads.shape[1] + 2), max(3, 0.4 * heads.shape[0] + 1.5)))
    im = ax.imshow(heads, aspect="auto", cmap="viridis")
    ax.set_xlabel("head")
    ax.set_ylabel("layer")
    ax.set_yticks(range(heads.shape[0]))
    fig.colorbar(im, ax=ax, label="mean attention entropy (nats)")
    ax.set_title("per-head attention entropy (dark = saturated)")
    fig.tight_layout()
    return fig


def layer_profiles_figure(
    profiles: dict[str, list[float]], title: str, ylabel: str, band: list[int] | None = None, log: bool = False
) -> plt.Figure:
    """Several per-layer curves (e.g. one per strategy or training step) on one axis."""
    fig, ax = plt.subplots(figsize=(6.5, 4))
    for label, values in profiles.items():
        ax.plot(range(len(values)), values, "o-", label=label, ms=4)
    if log and all(_positive(v) for v in profiles.values()):
        ax.set_yscale("log")
    if band:
        shade_band(ax, band)
    ax.set_xlabel("layer")
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def reliability_figure(output: dict) -> plt.Figure:
    """Reliability diagram of the output section: accuracy per confidence bin (one bar per non-empty
    bin, its count above it) against the diagonal of perfect calibration, mean confidence as a dot."""
    hist = output["histogram"]
    edges = np.asarray(hist["edges"], dtype=float)
    filled = [i for i, c in enumerate(hist["count"]) if c > 0]
    fig, ax = plt.subplots(figsize=(5.5, 4.5))
    ax.plot([0, 1], [0, 1], "--", color="grey", lw=1, label="perfect calibration")
    left = edges[filled]
    width = np.diff(edges)[filled]
    acc = np.asarray([hist["accuracy"][i] for i in filled], dtype=float)
    bars = ax.bar(left, acc, width=width, align="edge", color="tab:blue", edgecolor="k", alpha=0.75, label="accuracy")
    ax.plot(
        left + width / 2,
        [hist["mean_confidence"][i] for i in filled],
        "o",
        color="tab:red",
        ms=4,
        label="mean confidence",
    )
    for bar, i in zip(bars, filled):
        ax.annotate(
            f"n={hist['count'][i]}",
            (bar.get_x() + bar.get_width() / 2, bar.get_height()),
            ha="center",
            va="bottom",
            fontsize=7,
        )
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.1)
    ax.set_xlabel(f"confidence (max softmax probability) per {output.get('unit', 'example')}")
    ax.set_ylabel("accuracy")
    ax.set_title(f"reliability: ECE = {output['ece']:.3f}, accuracy = {output['accuracy']:.3f}", fontsize=10)
    ax.legend(fontsize=7, loc="upper left")
    fig.tight_layout()
    return fig
