"""Spectral decoupling (Pezeshki et al., arXiv 2011.09468): gradient starvation.

Cross-entropy weights each example's gradient by 1 - p_y (binary: sigma(-y*yhat)), which decays like
e^{-margin}: once a fast feature separates an example, the example stops teaching slower features.
An L2 penalty on the *logits* gives every example a finite optimal margin, so it keeps sending
gradient until it gets there. Penalties use the code's mean convention (code-lambda ~ paper-lambda/2).
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F

from ..errors import ConfigError

# The measurement (per-example gradient weight 1 - p_y, saturated share) lives in metrics.output.
from ..metrics.output import (  # noqa: F401 - grad_weights, saturated_fraction are re-exported
    IGNORE,
    at_least_fp32,
    grad_weights,
    output_rows,
    saturated_fraction,
    signed,
    true_class_prob,
)
from ..validate import Bound
from .base import Option, Remedy


def _rows(logits: torch.Tensor, labels: torch.Tensor | None, ignore_index: int = IGNORE):
    """Flatten to ([N, C] fp32 logits, [N] labels) and drop ignored rows (label -100, padding)."""
    if labels is None:
        z = at_least_fp32(logits)
        return (z.unsqueeze(-1) if z.dim() == 1 else z.reshape(-1, z.shape[-1])), None
    z, y, _ = output_rows(logits, labels, ignore_index=ignore_index)
    return z, y


def _binary_logit(z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The scalar output the per-class targets apply to [design]: the logit (C=1), z1-z0 (C=2),
    the correct-class logit (C>2)."""
    if z.shape[1] == 1:
        return z[:, 0]
    if z.shape[1] == 2:
        return z[:, 1] - z[:, 0]
    return z.gather(1, y.clamp(min=0).unsqueeze(1))[:, 0]


def sd_penalty(
    logits: torch.Tensor,
    labels: torch.Tensor | None = None,
    lam: float = 0.1,
    targets: Sequence[float] | None = None,
    ignore_index: int = IGNORE,
) -> torch.Tensor:
    """SD penalty in fp32. Plain: lam*mean over rows x classes of z^2. Per-class targets:
    sum_c lam*mean_{i: y_i=c}(yhat_i - gamma_c)^2; a class absent from the batch adds 0."""
    z, y = _rows(logits, labels, ignore_index)
    zero = at_least_fp32(logits).sum() * 0.0  # keeps the graph and dtype when nothing is valid
    if z.shape[0] == 0:
        return zero
    if targets is None:
        return lam * z.pow(2).mean()
    if y is None:
        raise ConfigError("spectral decoupling with per-class targets needs labels")
    yhat = _binary_logit(z, y)
    total = zero
    for c, gamma in enumerate(targets):
        sel = y == c
        if sel.any():
            total = total + lam * (yhat[sel] - float(gamma)).pow(2).mean()
    return total


def sd_binary_loss(logits: torch.Tensor, labels: torch.Tensor, lam: float = 0.003) -> torch.Tensor:
    """mean log(1+exp(-y*yhat)) + lam*mean yhat^2 (two-moons form; labels {0,1} or {-1,+1})."""
    yhat = at_least_fp32(logits).reshape(-1)
    ys = signed(labels.reshape(-1))
    return F.softplus(-ys * yhat).mean() + lam * yhat.pow(2).mean()


def sd_cross_entropy(
    logits: torch.Tensor,
    labels: torch.Tensor,
    lam: float = 0.1,
    targets: Sequence[float] | None = None,
    ignore_index: int = IGNORE,
) -> torch.Tensor:
    """CE + SD penalty (DomainBed multi-class form)."""
    z, y = _rows(logits, labels, ignore_index)
    ce = F.cross_entropy(z, y) if z.shape[0] else at_least_fp32(logits).sum() * 0.0
    return ce + sd_penalty(logits, labels, lam, targets, ignore_index)


# ---------------------------------------------------------------- diagnostics
# grad_weights / saturated_fraction (the per-example gradient weight 1 - p_y and the share of
# saturated examples) are the output-saturation diagnostic's, imported from metrics.output.


@torch.no_grad()
def logit_sq(logits, labels=None, ignore_index: int = IGNORE) -> float:
    """Mean yhat^2 over valid rows x classes: the plain SD penalty without lambda."""
    z, _ = _rows(logits.detach(), labels, ignore_index)
    return float(z.pow(2).mean()) if z.numel() else 0.0


def group_gap(correct: torch.Tensor, groups: torch.Tensor) -> float:
    """Average accuracy minus worst-group accuracy."""
    correct, groups = correct.double().reshape(-1), groups.reshape(-1)
    worst = min(float(correct[groups == g].mean()) for g in groups.unique())
    return float(correct.mean()) - worst


def ntk_modes(jacobian: torch.Tensor) -> torch.Tensor:
    """Eigenvectors u_k of J J^T (columns, eigenvalue descending); J is n x P at initialisation."""
    j = jacobian.double()
    evals, evecs = torch.linalg.eigh(j @ j.T)
    return evecs[:, evals.argsort(descending=True)]


def feature_responses(yhat: torch.Tensor, modes: torch.Tensor) -> torch.Tensor:
    """z_k = |yhat^T u_k| per NTK mode."""
    return (modes.T @ yhat.double().reshape(-1)).abs()


def response_ratio(z: torch.Tensor, strong: tuple[int, int] = (0, 3), weak: tuple[int, int] = (3, 20)) -> float:
    """R = ||z_{3..19}|| / ||z_{0..2}||: how much the weak modes were learned relative to the strong."""
    return float(z[weak[0] : weak[1]].norm() / z[strong[0] : strong[1]].norm().clamp_min(1e-300))


@torch.no_grad()
def boundary_margin(predict, x: torch.Tensor, grid: int = 400, lim: float = 2.0) -> tuple[float, float]:
    """2-D toys: (minimum distance from the points x to the zero level set of ``predict`` on a
    grid x grid lattice over [-lim, lim]^2, mean |x1| of the boundary inside the data's x2 range).
    Boundary points are the linearly interpolated sign changes between grid neighbours."""
    g = torch.linspace(-lim, lim, grid, dtype=torch.float64)
    step = float(g[1] - g[0])
    x2, x1 = torch.meshgrid(g, g, indexing="ij")  # rows vary x2, columns vary x1
    pts = torch.stack([x1.reshape(-1), x2.reshape(-1)], 1).to(x.dtype)
    f = torch.cat([predict(c).reshape(-1) for c in pts.split(16384)]).double().reshape(grid, grid)
    found = []
    for a, b, shift in ((f[:, :-1], f[:, 1:], (1, 0)), (f[:-1, :], f[1:, :], (0, 1))):
        r, c = torch.nonzero(torch.sign(a) != torch.sign(b), as_tuple=True)
        t = a[r, c] / (a[r, c] - b[r, c])
        found.append(torch.stack([x1[r, c] + shift[0] * t * step, x2[r, c] + shift[1] * t * step], 1))
    bnd = torch.cat(found)
    if not len(bnd):
        return float("nan"), float("nan")
    margin = float(torch.cdist(x.double(), bnd).min())
    inside = bnd[(bnd[:, 1] >= x[:, 1].min()) & (bnd[:, 1] <= x[:, 1].max())]
    return margin, float(inside[:, 0].abs().mean()) if len(inside) else float("nan")


class StarvationMeter:
    """Streaming starvation statistics over batches (keeps the per-example weights of one epoch)."""

    def __init__(self, threshold: float = 0.99):
        self.threshold = threshold
        self.reset()

    def reset(self) -> None:
        self._w: list[torch.Tensor] = []
        self._y: list[torch.Tensor] = []
        self._sq_sum, self._sq_n = 0.0, 0

    @torch.no_grad()
    def update(self, logits, labels, ignore_index: int = IGNORE) -> None:
        z, y = _rows(logits.detach(), labels, ignore_index)
        self._w.append(1.0 - true_class_prob(z, y))
        self._y.append(y)
        self._sq_sum += float(z.pow(2).sum())
        self._sq_n += z.numel()

    def compute(self) -> dict[str, float]:
        if not self._w:
            return {}
        w, y = torch.cat(self._w), torch.cat(self._y)
        out = {
            "starvation.grad_weight_mean": float(w.mean()),
            "starvation.grad_weight_p50": float(w.quantile(0.5)),
            "starvation.grad_weight_p90": float(w.quantile(0.9)),
            "starvation.saturated_frac": float((w < 1 - self.threshold).float().mean()),
            "starvation.logit_sq": self._sq_sum / max(self._sq_n, 1),
        }
        for c in y.unique().tolist():
            out[f"starvation.saturated_frac.class{c}"] = float((w[y == c] < 1 - self.threshold).float().mean())
        return out


class SpectralDecoupling(Remedy):
    """Adds the SD penalty to any logits loss; metrics describe the latest training batch."""

    name = "spectral-decoupling"
    options = {
        "sd_lambda": Option(
            float,
            0.1,
            "SD penalty weight (mean convention; multi-class default 0.1)",
            "lam",
            Bound(0, "a penalty weight", integer=False),
        ),
        "sd_targets": Option(str, None, "per-class logit targets gamma_c, comma-separated (e.g. 0.44,2.5)", "targets"),
    }

    def __init__(self, lam: float = 0.1, targets: Sequence[float] | str | None = None):
        if lam < 0:
            raise ConfigError(f"--sd-lambda must be >= 0, got {lam}")
        if isinstance(targets, str):
            try:
                targets = [float(t) for t in targets.split(",") if t.strip()]
            except ValueError:
                raise ConfigError(f"--sd-targets: expected comma-separated numbers, got {targets!r}") from None
        self.lam, self.targets = float(lam), (list(targets) if targets is not None else None)
        self._meter = StarvationMeter()
        self._last: dict[str, float] = {}

    def penalty(self, logits, labels=None):
        return sd_penalty(logits, labels, self.lam, self.targets)

    def loss(self, logits, labels, loss):
        self._meter.reset()
        if labels is not None:
            self._meter.update(logits, labels)
        self._last = self._meter.compute()
        if self.lam == 0:
            return loss  # neutral setting: exactly the baseline loss
        return loss + self.penalty(logits, labels).to(loss.dtype)

    def metrics(self) -> dict[str, float]:
        return dict(self._last)
