"""Drift-adjusted learning rate (Rosca et al., arXiv 2302.01952): discretisation drift.

Gradient descent is not gradient flow: along a direction of curvature lambda a step h oscillates
for h*lambda > 1 and diverges for h*lambda > 2. DAL measures the curvature along the gradient,
v = ||Hg||/||g|| (one Hessian-vector product, exact or by one extra gradient), and steps with
eta = min(2/v^p, eta_max). With p = 1 the drift (eta^2/2)||Hg|| equals the step length eta*||g||.
Meant for plain (S)GD: momentum moves the stability edge to ~2(1+mu)/lambda, Adam rescales g.
"""

from __future__ import annotations

import time
import warnings
from typing import Callable, Sequence

import torch

from ..errors import ConfigError, TrainingError
from ..validate import Bound
from .base import Option, Remedy


def _norm(ts: Sequence[torch.Tensor]) -> torch.Tensor:
    return torch.sqrt(sum((t.double() ** 2).sum() for t in ts))


def _second(g: Sequence[torch.Tensor], params: Sequence[torch.Tensor], vec: Sequence[torch.Tensor]):
    """d(g . vec)/d params from a create_graph gradient; zero where g is constant (linear loss)."""
    live = [i for i, x in enumerate(g) if x.requires_grad]
    out = [torch.zeros_like(p) for p in params]
    if live:
        hv = torch.autograd.grad(
            [g[i] for i in live], params, grad_outputs=[vec[i] for i in live], allow_unused=True, materialize_grads=True
        )
        out = [h.detach() for h in hv]
    return out


def dal_lr(v: float, p: float = 1.0, lr_max: float = 5.0) -> float:
    """eta = min(2 / v^p, eta_max); v = 0 (flat along g) gives eta_max."""
    if not v > 0:
        return float(lr_max)
    return float(min(2.0 / v**p, lr_max))


def hvp_exact(loss_fn: Callable[[], torch.Tensor], params: Sequence[torch.Tensor], vec: Sequence[torch.Tensor]):
    """(loss, g, Hv) by double backward."""
    loss = loss_fn()
    g = torch.autograd.grad(loss, params, create_graph=True)
    hv = _second(g, params, list(vec))
    return loss.detach(), [t.detach() for t in g], hv


@torch.no_grad()
def _shift(params, direction, eps):
    for p, d in zip(params, direction):
        p.add_(d, alpha=eps)


def hvp_fd(
    grad_fn: Callable[[], Sequence[torch.Tensor]],
    params: Sequence[torch.Tensor],
    g: Sequence[torch.Tensor],
    eps: float | None = None,
    eps_scale: float = 0.01,
):
    """H g ~ (grad(theta + eps*g) - g)/eps with eps = 0.01/||g||. Needs a deterministic forward
    (same batch, same dropout mask, no batch-norm update). Parameters are restored exactly."""
    gn = float(_norm(g))
    if gn == 0:
        return [torch.zeros_like(t) for t in g]
    eps = eps_scale / gn if eps is None else eps
    saved = [p.detach().clone() for p in params]
    _shift(params, g, eps)
    try:
        g2 = grad_fn()
    finally:
        with torch.no_grad():
            for p, s in zip(params, saved):
                p.copy_(s)
    return [(b.detach() - a) / eps for a, b in zip(g, g2)]


def curvature_along_gradient(
    loss_fn: Callable[[], torch.Tensor], params: Sequence[torch.Tensor], method: str = "exact"
):
    """(v, loss, g, Hg) with v = ||Hg|| / ||g|| (negative curvature counts as positive)."""
    params = list(params)
    if method == "exact":
        loss = loss_fn()
        g = torch.autograd.grad(loss, params, create_graph=True)
        hg = _second(g, params, [t.detach() for t in g])
        g = [t.detach() for t in g]
    elif method == "fd":
        loss = loss_fn()
        g = [t.detach() for t in torch.autograd.grad(loss, params)]
        hg = hvp_fd(lambda: torch.autograd.grad(loss_fn(), params), params, g)
    else:
        raise ConfigError(f"DAL hvp must be exact or fd, got {method!r}")
    gn = float(_norm(g))
    v = float(_norm(hg)) / gn if gn > 0 else 0.0
    return v, loss.detach(), g, hg


def lambda_max(loss_fn, params: Sequence[torch.Tensor], iters: int = 20, seed: int = 0) -> float:
    """Largest |eigenvalue| of the Hessian by power iteration (edge of stability sits at ~2/h)."""
    params = list(params)
    gen = torch.Generator().manual_seed(seed)
    vec = [torch.randn(p.shape, generator=gen, dtype=p.dtype) for p in params]
    lam = 0.0
    for _ in range(iters):
        n = float(_norm(vec))
        vec = [v / n for v in vec]
        _, _, hv = hvp_exact(loss_fn, params, vec)
        lam = float(_norm(hv))
        vec = hv
    return lam


class DAL(torch.optim.Optimizer):
    """Plain gradient descent with eta_t = min(2/v_t^p, lr_max), v_t = ||Hg||/||g||.

    ``step(closure)``: ``closure()`` returns the loss *without* calling backward (DAL
    differentiates it itself, twice for ``hvp='fd'``), on the same batch each call. Outside the
    window start < t < stop the static ``lr`` is used; v is refreshed every ``every_k`` steps.
    """

    def __init__(
        self,
        params,
        lr: float = 0.01,
        p: float = 1.0,
        lr_max: float = 5.0,
        hvp: str = "fd",
        every_k: int = 1,
        start: int | None = None,
        stop: int | None = None,
    ):
        if hvp not in ("exact", "fd"):
            raise ConfigError(f"DAL hvp must be exact or fd, got {hvp!r}")
        if every_k < 1 or lr_max <= 0:
            raise ConfigError("DAL needs every_k >= 1 and lr_max > 0")
        super().__init__(params, dict(lr=lr))
        self.p, self.lr_max, self.hvp, self.every_k = float(p), float(lr_max), hvp, int(every_k)
        self.start, self.stop = start, stop
        self.t = 0
        self.v: float | None = None
        self.eta: float | None = None
        self.time_grad, self.time_extra = 0.0, 0.0
        self.history: list[dict] = []

    def _params(self) -> list[torch.Tensor]:
        return [p for g in self.param_groups for p in g["params"] if p.requires_grad]

    def in_window(self, t: int) -> bool:
        return (self.start is None or self.start < t) and (self.stop is None or t < self.stop)

    def step(self, closure: Callable[[], torch.Tensor]):  # type: ignore[override]
        if closure is None:
            raise ConfigError("DAL.step needs a closure that returns the loss (no backward)")
        params, t = self._params(), self.t
        measure = self.in_window(t) and (self.eta is None or t % self.every_k == 0)
        with torch.enable_grad():
            t0 = time.perf_counter()
            loss = closure()
            if measure and self.hvp == "exact":
                g = torch.autograd.grad(loss, params, create_graph=True)
                t1 = time.perf_counter()
                hg = _second(g, params, [x.detach() for x in g])
                g = [x.detach() for x in g]
            else:
                g = [x.detach() for x in torch.autograd.grad(loss, params)]
                t1 = time.perf_counter()
                if measure:
                    hg = hvp_fd(lambda: torch.autograd.grad(closure(), params), params, g)
            t2 = time.perf_counter()
        self.time_grad += t1 - t0
        self.time_extra += t2 - t1
        if measure:
            gn = float(_norm(g))
            self.v = float(_norm(hg)) / gn if gn > 0 else 0.0
            self.eta = dal_lr(self.v, self.p, self.lr_max)
        eta = self.eta if self.in_window(t) else self.param_groups[0]["lr"]
        with torch.no_grad():
            for prm, gi in zip(params, g):
                prm.grad = gi
                prm.add_(gi, alpha=-eta)
        self.history.append({"step": t, "loss": float(loss.detach()), "lr": eta, "v": self.v})
        self.t += 1
        return loss.detach()

    def metrics(self) -> dict[str, float]:
        if self.v is None:
            return {}
        eta = self.history[-1]["lr"] if self.history else self.eta
        return {
            "drift.v": self.v,
            "drift.lr": eta,
            "drift.hv": eta * self.v,
            "drift.ratio": eta * self.v / 2,
            "drift.overhead": (self.time_grad + self.time_extra) / max(self.time_grad, 1e-12),
        }


class DriftAdjustedLR(Remedy):
    """DAL inside a trainer: after backward, measure v by finite difference (replaying the last
    forward with the same RNG state, so the dropout mask matches) and set the optimizer's lr to eta.

    The remedy only meets the optimizer in ``after_step``; at step 0 it either rescales the gradient
    by eta/base_lr (when ``base_lr`` is given) or zeroes it (a measure-only step). Needs the model to
    return ``.loss`` (labels in the batch), no gradient accumulation, and plain SGD without momentum.
    """

    name = "dal"
    options = {
        "dal_p": Option(
            float,
            1.0,
            "exponent p in eta = min(2/v^p, lr_max); only p=1 is loss-scale invariant",
            "p",
            Bound(0, "an exponent", open_low=True, integer=False),
        ),
        "dal_lr_max": Option(
            float, 5.0, "cap on the learning rate", "lr_max", Bound(0, "a learning rate", open_low=True, integer=False)
        ),
        "dal_every": Option(int, 1, "measure v every k steps (reuse eta in between)", "every_k", Bound(1, "steps")),
        "dal_start": Option(int, None, "DAL only for steps t > start", "start", Bound(0, "a step")),
        "dal_stop": Option(int, None, "DAL only for steps t < stop", "stop", Bound(1, "a step")),
        "dal_base_lr": Option(
            float,
            None,
            "optimizer lr, used only to rescale step 0's gradient",
            "base_lr",
            Bound(0, "a learning rate", open_low=True, integer=False),
        ),
    }

    def __init__(
        self,
        p: float = 1.0,
        lr_max: float = 5.0,
        every_k: int = 1,
        start: int | None = None,
        stop: int | None = None,
        base_lr: float | None = None,
    ):
        if every_k < 1 or lr_max <= 0:
            raise ConfigError("--dal-every must be >= 1 and --dal-lr-max > 0")
        self.p, self.lr_max, self.every_k, self.start, self.stop = p, lr_max, every_k, start, stop
        self.base_lr, self.optimizer = base_lr, None
        self.v: float | None = None
        self.eta: float | None = None
        self._call = None
        self._warned = False
        self._last: dict[str, float] = {}

    def wrap_model(self, model):
        inner = model.forward

        def forward(*args, **kwargs):
            cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None
            self._call = (args, kwargs, (torch.random.get_rng_state(), cuda))
            return inner(*args, **kwargs)

        model.forward = forward
        return model

    def in_window(self, t: int) -> bool:
        return (self.start is None or self.start < t) and (self.stop is None or t < self.stop)

    def _replay_grad(self, model, params):
        args, kwargs, (cpu, cuda) = self._call
        devices = list(range(len(cuda))) if cuda is not None else []
        with torch.random.fork_rng(devices=devices), torch.enable_grad():  # same dropout mask as the step
            torch.random.set_rng_state(cpu)
            if cuda is not None:
                torch.cuda.set_rng_state_all(cuda)
            out = model(*args, **kwargs)
        loss = getattr(out, "loss", None) if not isinstance(out, dict) else out.get("loss")
        if loss is None:
            raise TrainingError("DAL needs the model to return a loss: put the labels in the batch")
        return torch.autograd.grad(loss, params, allow_unused=True)

    def after_backward(self, model, step):
        if not self.in_window(step):
            return
        params = [p for p in model.parameters() if p.requires_grad and p.grad is not None]
        if self._call is None or not params:
            return
        if self.eta is None or step % self.every_k == 0:
            g = [p.grad.detach().clone() for p in params]
            call = self._call
            hg = hvp_fd(
                lambda: [
                    torch.zeros_like(p) if x is None else x for p, x in zip(params, self._replay_grad(model, params))
                ],
                params,
                g,
            )
            self._call = call
            gn = float(_norm(g))
            self.v = float(_norm(hg)) / gn if gn > 0 else 0.0
            self.eta = dal_lr(self.v, self.p, self.lr_max)
        if self.optimizer is not None:
            for group in self.optimizer.param_groups:
                group["lr"] = self.eta
        else:
            with torch.no_grad():
                scale = self.eta / self.base_lr if self.base_lr else 0.0
                for p in params:
                    p.grad.mul_(scale)
        self._last = {
            "drift.v": self.v,
            "drift.lr": self.eta,
            "drift.hv": self.eta * self.v,
            "drift.ratio": self.eta * self.v / 2,
        }

    def after_step(self, model, optimizer, step, batch):
        self.optimizer = optimizer
        if not self._warned:
            self._warned = True
            momentum = optimizer.param_groups[0].get("momentum", 0) if optimizer.param_groups else 0
            if not isinstance(optimizer, torch.optim.SGD) or momentum:
                warnings.warn(
                    f"DAL assumes plain SGD; {type(optimizer).__name__} (momentum={momentum}) moves the "
                    "stability edge, so eta = 2/v is no longer the edge",
                    stacklevel=2,
                )

    def metrics(self) -> dict[str, float]:
        return dict(self._last)
