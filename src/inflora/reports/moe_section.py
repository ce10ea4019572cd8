"""Mixture-of-experts blocks in the diagnosis: the router's load and entropy and each expert's
gradient, as one table (report and command line) and a heat-map of blocks × experts."""

from __future__ import annotations

import math

MOE_COLUMNS = ("block", "H/log E", "max load·E", "dead", "‖∇‖ experts min–max", "‖∇‖ router", "band")


def _finite(values) -> list[float]:
    return [v for v in values if isinstance(v, (int, float)) and math.isfinite(v)]


def moe_rows(d) -> list[dict]:
    """One row per MoE block: normalised router entropy (1 = uniform over experts), the busiest
    expert's load times E (1 = balanced), experts no token picked, the spread of per-expert
    gradient norms, the router's gradient norm, and whether the block is in the band."""
    rows = []
    for r in d.layers:
        if "expert_load" not in r:
            continue
        grads = _finite(r["expert_grad_norm"])
        spread = f"{min(grads):.2e}–{max(grads):.2e}" if grads else "n/a"
        rows.append(
            dict(
                zip(
                    MOE_COLUMNS,
                    (
                        r["layer"],
                        r["router_entropy_norm"],
                        r["expert_load_max_ratio"],
                        r["dead_experts"],
                        spread,
                        r["router_grad_norm"],
                        "●" if r["layer"] in d.inflection_layers else "",
                    ),
                )
            )
        )
    return rows


def moe_figure(d):
    """Two heat-maps over blocks × experts: share of routed tokens, and parameter-gradient norm."""
    import numpy as np

    from .plots import plt

    rows = [r for r in d.layers if "expert_load" in r]
    load = np.array([r["expert_load"] for r in rows], dtype=float)
    grad = np.array([r["expert_grad_norm"] for r in rows], dtype=float)
    fig, axes = plt.subplots(1, 2, figsize=(11, max(3, 0.4 * len(rows) + 1.8)))
    for ax, values, title, label in (
        (axes[0], load, "router load (share of top-k picks)", "share"),
        (axes[1], grad, "expert parameter-gradient norm", "‖∇θL‖"),
    ):
        im = ax.imshow(values, aspect="auto", cmap="viridis")
        ax.set_xlabel("expert")
        ax.set_xticks(range(values.shape[1]))
        ax.set_ylabel("block")
        ax.set_yticks(range(len(rows)), [str(r["layer"]) for r in rows])
        ax.set_title(title, fontsize=10)
        fig.colorbar(im, ax=ax, label=label)
    fig.suptitle(
        f"{d.model}: mixture-of-experts blocks ({d.moe.get('num_experts')} experts, top-{d.moe.get('top_k')})",
        fontsize=11,
    )
    fig.tight_layout()
    return fig


def add_moe_section(rep, d) -> None:
    k, e = d.moe.get("top_k"), d.moe.get("num_experts")
    rep.heading("Mixture-of-experts blocks").text(
        f"Each token is sent to {k} of {e} experts. *H/log E* is the mean entropy of the router's softmax over "
        "the experts, divided by its maximum (1 = the router cannot tell experts apart; near 0 = near one-hot "
        "routing, little gradient into the router). *max load·E* is the busiest expert's share of the top-k "
        "picks times E (1 = balanced); *dead* experts received no token of the probe and so no gradient. "
        "LoRA with `--lora-targets experts` adapts the fused expert weights of the band's blocks."
    )
    rep.table(moe_rows(d), digits=3)
    rep.figure(moe_figure(d), "moe", "Router load and expert gradient per block (rows) and expert (columns).")
