"""Training-time diagnostics from the real training batches: no extra forward or backward passes.

Every ``every`` steps the probe's hooks are switched on for that step's own forward/backward, and
the per-layer activation- and parameter-gradient norms of that step are recorded.
"""
from __future__ import annotations

from ..probe import LayerProbe


class GradLogger:
    def __init__(self, model, every: int = 10):
        self.every = max(1, every)
        self.probe = LayerProbe(model, ["activation_grad", "param_grad"])
        self.probe.ctx.active = False
        self.rows: list[dict] = []

    def before_step(self, step: int) -> None:
        self.probe.ctx.active = step % self.every == 0

    def after_backward(self, step: int, loss: float) -> dict | None:
        if not self.probe.ctx.active:
            return None
        self.probe.after_backward()
        last = [self.probe.num_batches() - 1]
        rows = self.probe.layer_results(last)
        groups = self.probe.group_results(last)
        row = {"step": step, "loss": loss,
               "activation_grad_norm": [r.get("activation_grad_norm") for r in rows],
               "param_grad_norm": [r.get("param_grad_norm") for r in rows], **groups}
        self.rows.append(row)
        self.probe.ctx.active = False
        return row

    def close(self) -> None:
        self.probe.close()
