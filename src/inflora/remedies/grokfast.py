"""Grokfast (Lee et al., arXiv 2405.20233): delayed generalisation (grokking).

Treats each parameter's gradient sequence as a signal and amplifies its slow component, which is
what eventually generalises: g <- g + lamb * lowpass(g). Call the filter once per optimizer step,
between backward (after AMP unscaling) and clipping/step. Checkpoint the filter state.
"""

from __future__ import annotations

from collections import deque
from typing import Sequence

import torch
from torch import nn

from ..errors import ConfigError
from ..validate import Bound
from .base import Option, Remedy


@torch.no_grad()
def gradfilter_ema(model: nn.Module, grads: dict | None = None, alpha: float = 0.98, lamb: float = 2.0) -> dict:
    """EMA filter: mu_0 = g_0, mu <- alpha*mu + (1-alpha)*g, g <- g + lamb*mu. Returns the state."""
    if grads is None:
        grads = {
            n: p.grad.detach().clone() for n, p in model.named_parameters() if p.requires_grad and p.grad is not None
        }
    for n, p in model.named_parameters():
        if p.requires_grad and p.grad is not None:
            if n not in grads:
                grads[n] = p.grad.detach().clone()
            grads[n].mul_(alpha).add_(p.grad, alpha=1 - alpha)
            if lamb:
                p.grad.add_(grads[n], alpha=lamb)
    return grads


@torch.no_grad()
def gradfilter_ma(
    model: nn.Module, grads: dict | None = None, window_size: int = 100, lamb: float = 5.0, warmup: bool = True
) -> dict:
    """MA filter: g <- g + lamb * mean of the last ``window_size`` gradients, once the window is full."""
    if grads is None:
        grads = {}
    for n, p in model.named_parameters():
        if p.requires_grad and p.grad is not None:
            q = grads.setdefault(n, deque(maxlen=window_size))
            q.append(p.grad.detach().clone())
            if (not warmup or len(q) == window_size) and lamb:
                p.grad.add_(sum(q) / len(q), alpha=lamb)
    return grads


def generalization_gap(train_acc: float, val_acc: float) -> float:
    """grok.gap: train minus validation accuracy."""
    return float(train_acc) - float(val_acc)


def steps_to_threshold(steps: Sequence[int], val_acc: Sequence[float], threshold: float = 0.95) -> int | None:
    """grok.steps_to_95: first logged step with validation accuracy >= threshold (None if never)."""
    return next((int(s) for s, a in zip(steps, val_acc) if a >= threshold), None)


class GrokTracker:
    """Streaming version of the two grok diagnostics over evaluations."""

    def __init__(self, threshold: float = 0.95):
        self.threshold, self.steps_to, self.gap = threshold, None, None

    def update(self, step: int, train_acc: float, val_acc: float) -> None:
        self.gap = generalization_gap(train_acc, val_acc)
        if self.steps_to is None and val_acc >= self.threshold:
            self.steps_to = int(step)

    def compute(self) -> dict[str, float]:
        out = {} if self.gap is None else {"grok.gap": self.gap}
        if self.steps_to is not None:
            out["grok.steps_to_95"] = float(self.steps_to)
        return out


class Grokfast(Remedy):
    """Gradient filter as a training remedy (runs in ``after_backward``)."""

    name = "grokfast"
    options = {
        "grokfast_mode": Option(str, "ema", "ema or ma", "mode"),
        "grokfast_alpha": Option(
            float,
            0.98,
            "EMA momentum alpha (alpha^N ~ 0.1 for an N-fold speed-up)",
            "alpha",
            Bound(0, "an EMA momentum", high=1, integer=False),
        ),
        "grokfast_lamb": Option(
            float, 2.0, "amplification lambda (MA default 5)", "lamb", Bound(0, "an amplification", integer=False)
        ),
        "grokfast_window": Option(int, 100, "MA window size", "window", Bound(1, "steps")),
    }

    def __init__(self, mode: str = "ema", alpha: float = 0.98, lamb: float = 2.0, window: int = 100):
        if mode not in ("ema", "ma"):
            raise ConfigError(f"--grokfast-mode must be ema or ma, got {mode!r}")
        if not 0 <= alpha < 1 or window < 1:
            raise ConfigError("Grokfast needs 0 <= alpha < 1 and window >= 1")
        self.mode, self.alpha, self.lamb, self.window = mode, alpha, lamb, window
        self.grads: dict | None = None
        self._last: dict[str, float] = {}

    @torch.no_grad()
    def after_backward(self, model, step):
        if self.mode == "ema":
            gnorm = torch.sqrt(sum((p.grad.double() ** 2).sum() for p in model.parameters() if p.grad is not None))
            self.grads = gradfilter_ema(model, self.grads, self.alpha, self.lamb)
            mu = torch.sqrt(sum((g.double() ** 2).sum() for g in self.grads.values()))
            self._last = {"grok.mu_ratio": float(mu / gnorm) if gnorm > 0 else 0.0}
        else:
            self.grads = gradfilter_ma(model, self.grads, self.window, self.lamb)

    def state_dict(self) -> dict:
        if self.mode == "ema":
            return {"grads": {k: v.clone() for k, v in (self.grads or {}).items()}}
        return {"grads": {k: list(v) for k, v in (self.grads or {}).items()}}

    def load_state_dict(self, state: dict) -> None:
        g = state.get("grads") or {}
        self.grads = dict(g) if self.mode == "ema" else {k: deque(v, maxlen=self.window) for k, v in g.items()}

    def metrics(self) -> dict[str, float]:
        return dict(self._last)
