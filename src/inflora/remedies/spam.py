"""SPAM (Huang et al., arXiv 2501.06842): spike-aware Adam with momentum reset.

A gradient spike (up to 1000x typical) lives in Adam's m and v for ~1/(1-beta) steps. SPAM clips
coordinates with g^2 > theta * v_prev to sign(g)*sqrt(theta * v_prev) (v_prev: second moment before
this update), zeroes m and v every Delta_T steps (the step count is kept), and ramps the update back
in along a cosine over N steps after each reset, since the first post-reset update would be ~3.2*lr.
"""

from __future__ import annotations

import math

import torch

from ..errors import ConfigError
from ..validate import Bound
from .base import Option, Remedy


def warmup_scale(k: int, n: int) -> float:
    """s(k) after a reset: 1 - 0.99*(1+cos(pi*k/(n+1)))/2 for k < n (s(0) = 0.01), then 1."""
    if k >= n:
        return 1.0
    return 1.0 - 0.99 * (1 + math.cos(math.pi * k / (n + 1))) / 2


def spike_stats(grad: torch.Tensor, v_prev: torch.Tensor, theta: float = 5000.0) -> dict[str, float]:
    """spike.frac = share of coordinates with g^2 > theta*v_prev; spike.max_ratio = max g^2/v_prev
    (coordinates with v_prev = 0 carry no history and are skipped)."""
    g2, v = grad.detach().double() ** 2, v_prev.detach().double()
    ok = v > 0
    if not ok.any():
        return {"spike.frac": 0.0, "spike.max_ratio": 0.0}
    ratio = g2[ok] / v[ok]
    return {"spike.frac": float((ratio > theta).double().sum() / g2.numel()), "spike.max_ratio": float(ratio.max())}


class SPAM(torch.optim.Optimizer):
    """Adam(W) with spike clipping, periodic momentum reset and a cosine ramp after each reset.

    ``delta_t=None`` (or inf) never resets and ``theta=0`` never clips: then it is torch's AdamW
    (single-tensor path) bit for bit. [design] Decoupled weight decay is applied before the update,
    as torch's AdamW does (the official code applies it after; the difference is O(lr^2*wd)).
    """

    def __init__(
        self,
        params,
        lr: float = 1e-3,
        betas=(0.9, 0.999),
        eps: float = 1e-6,
        weight_decay: float = 0.0,
        theta: float = 5000.0,
        delta_t: int | float | None = 500,
        warmup: int = 150,
        grace: int = 20,
    ):
        if lr < 0 or eps < 0 or theta < 0 or not (0 <= betas[0] < 1 and 0 <= betas[1] < 1):
            raise ConfigError("SPAM needs lr, eps, theta >= 0 and betas in [0, 1)")
        if delta_t is not None and not delta_t > 0:
            raise ConfigError(f"SPAM delta_t must be > 0 or None, got {delta_t}")
        super().__init__(params, dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay))
        self.theta, self.warmup, self.grace = float(theta), int(warmup), int(grace)
        self.delta_t = None if delta_t is None or math.isinf(delta_t) else int(delta_t)
        self.total_step = 0  # t, counts every step (never reset)
        self.since_reset: int | None = None
        self.last_stats: dict[str, float] = {}

    def _mod(self, x: int) -> int:
        return x if self.delta_t is None else x % self.delta_t

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        t1 = self.total_step + 1
        reset = self.delta_t is not None and t1 % self.delta_t == 0
        if reset:
            self.since_reset = 0
        scale = 1.0 if self.since_reset is None else warmup_scale(self.since_reset, self.warmup)
        clip = self.theta > 0 and t1 >= self.grace and self._mod(t1) >= self.grace
        n_spike, n_total, max_ratio = 0, 0, 0.0
        for group in self.param_groups:
            beta1, beta2 = group["betas"]
            lr, eps, wd = group["lr"], group["eps"], group["weight_decay"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                grad = p.grad
                state = self.state[p]
                if not state:
                    state["step"] = torch.tensor(0.0)
                    state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                    state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                m, v = state["exp_avg"], state["exp_avg_sq"]
                if reset:
                    m.zero_()
                    v.zero_()
                stats = (
                    spike_stats(grad, v, self.theta) if self.theta > 0 else {"spike.frac": 0.0, "spike.max_ratio": 0.0}
                )
                n_spike += stats["spike.frac"] * grad.numel()
                n_total += grad.numel()
                max_ratio = max(max_ratio, stats["spike.max_ratio"])
                if clip:
                    limit = v.mul(self.theta)
                    mask = grad.pow(2) > limit
                    if mask.any():
                        grad = torch.where(mask, grad.sign() * limit.sqrt(), grad)
                state["step"] += 1
                step = state["step"].item()
                p.mul_(1 - lr * wd)
                m.lerp_(grad, 1 - beta1)
                v.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
                bc1, bc2 = 1 - beta1**step, 1 - beta2**step
                denom = (v.sqrt() / bc2**0.5).add_(eps)
                p.addcdiv_(m, denom, value=-(lr / bc1) * scale if scale != 1.0 else -(lr / bc1))
        self.last_stats = {"spike.frac": n_spike / max(n_total, 1), "spike.max_ratio": max_ratio, "spam.scale": scale}
        self.total_step += 1
        if self.since_reset is not None:
            self.since_reset += 1
        return loss

    def state_dict(self):
        sd = super().state_dict()
        sd["spam"] = {"total_step": self.total_step, "since_reset": self.since_reset}
        return sd

    def load_state_dict(self, state_dict):
        extra = state_dict.get("spam", {})
        super().load_state_dict({k: v for k, v in state_dict.items() if k != "spam"})
        self.total_step = extra.get("total_step", 0)
        self.since_reset = extra.get("since_reset")


class SpikeMonitor(Remedy):
    """The SPAM diagnostic for any Adam-family run: spike.frac and spike.max_ratio per step,
    read from the optimizer's exp_avg_sq before the update (so SPAM itself is chosen with
    ``--optimizer spam`` by the trainer; this remedy only watches)."""

    name = "spam"
    options = {
        "spam_theta": Option(
            float,
            5000.0,
            "spike threshold theta (g^2 > theta * v)",
            "theta",
            Bound(0, "a spike threshold", open_low=True, integer=False),
        ),
        "spam_delta_t": Option(
            int, 500, "momentum reset interval Delta_T (used by make_optimizer)", "delta_t", Bound(1, "steps")
        ),
        "spam_warmup": Option(int, 150, "cosine ramp length N after each reset", "warmup", Bound(0, "steps")),
    }

    def __init__(self, theta: float = 5000.0, delta_t: int | None = 500, warmup: int = 150):
        self.theta, self.delta_t, self.warmup = theta, delta_t, warmup
        self.optimizer = None
        self._last: dict[str, float] = {}

    def make_optimizer(self, params, lr: float = 1e-3, weight_decay: float = 0.0, **kw) -> SPAM:
        """The SPAM optimizer configured from this remedy's options."""
        return SPAM(
            params, lr=lr, weight_decay=weight_decay, theta=self.theta, delta_t=self.delta_t, warmup=self.warmup, **kw
        )

    @torch.no_grad()
    def after_backward(self, model, step):
        opt = self.optimizer
        if opt is None or isinstance(opt, SPAM):
            return  # SPAM reports its own stats in after_step
        n_spike, n_total, max_ratio = 0.0, 0, 0.0
        for p in model.parameters():
            st = opt.state.get(p)
            if p.grad is None or not st or "exp_avg_sq" not in st:
                continue
            s = spike_stats(p.grad, st["exp_avg_sq"], self.theta)
            n_spike += s["spike.frac"] * p.numel()
            n_total += p.numel()
            max_ratio = max(max_ratio, s["spike.max_ratio"])
        self._last = {"spike.frac": n_spike / max(n_total, 1), "spike.max_ratio": max_ratio}

    def after_step(self, model, optimizer, step, batch):
        self.optimizer = optimizer
        if isinstance(optimizer, SPAM):
            self._last = dict(optimizer.last_stats)

    def metrics(self) -> dict[str, float]:
        return dict(self._last)
