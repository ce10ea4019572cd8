"""τ-dormant FFN units per layer (ReDo's diagnostic) from the probe's own forward pass.

A unit's score is E|h| over non-padding tokens divided by the layer's mean over units; it is
dormant when the score is ≤ τ. The functional forms and the recycler live in
``inflora.remedies.redo``; this plugin only streams the per-unit sums.
"""
from __future__ import annotations

import math

import torch

from ..errors import ArchitectureError
from .accumulate import ProbePlugin, SumAccumulator

TAUS = (0.025, 0.1)


class DormantUnits(SumAccumulator):
    fields = ("abs_sum", "tokens")

    def compute_from(self, t: dict[str, torch.Tensor]) -> dict:
        from ..remedies.redo import dormant_fraction, normalise_scores

        if float(t["tokens"]) == 0 or t["abs_sum"].numel() < 2:
            return {f"dormant_frac_{tau}": math.nan for tau in TAUS}
        scores = normalise_scores((t["abs_sum"] / t["tokens"]).float())
        return {f"dormant_frac_{tau}": dormant_fraction(scores, tau) for tau in TAUS}


class DormantProbe(ProbePlugin):
    """Hooks each block's FFN activation (families with a known FFN layout; others report NaN)."""

    name = "dormant"

    def attach(self, ctx) -> None:
        from ..probe import hf_model
        from ..remedies.redo import transformer_units

        self.layers = [DormantUnits() for _ in ctx.blocks]
        try:
            units = transformer_units(hf_model(ctx.model))
        except ArchitectureError:
            return
        for acc, unit in zip(self.layers, units):
            def hook(module, args, output, acc=acc):
                if ctx.active:
                    a = output.detach().float().abs()
                    m = ctx.attention_mask.to(a.dtype)[..., None]
                    acc.add((a * m).sum((0, 1)), m.sum())
            self.handles.append(unit.act.register_forward_hook(hook))
