"""N:M sparsity with progressive gradient flow (Bambhaniya et al., arXiv 2402.04744).

At high N:M sparsity (1:8 and beyond) plain straight-through training (STE) lets many pruned weights
flip in and out of the mask, which makes the gradient norm noisy. SR-STE decays pruned weights;
MDGF keeps pruned weights in the forward pass at a decaying weight beta_t; SDGF tightens the pattern
in stages. The diagnostic is the mask flip rate (SAD) and the gradient-norm CV per sparse layer.
Every recipe uses the identity (straight-through) backward: dL/dW := dL/dW_eff.
"""

from __future__ import annotations

import math
from collections import deque
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ArchitectureError, ConfigError
from ..models import arch_for, get_blocks
from ..validate import Bound
from .base import Option, Remedy

RECIPES = ("ste", "sr-ste", "mdgf-linear", "mdgf-exp", "sdgf-stepwise", "sdgf-geometric")


def parse_pattern(text: str) -> tuple[int, int]:
    try:
        n, m = (int(v) for v in str(text).split(":"))
    except ValueError:
        raise ConfigError(f"--nm expects N:M such as 2:4 or 1:8, got {text!r}") from None
    if not 0 < n <= m:
        raise ConfigError(f"--nm {text}: need 0 < N <= M")
    return n, m


# ---------------------------------------------------------------- mask
def nm_mask(weight: torch.Tensor, n: int, m: int, mode: str = "row") -> torch.Tensor:
    """Boolean mask keeping the n largest |w| in each group of m consecutive inputs.

    Linear [out, in]: row mode groups along inputs, column mode along outputs (W^T).
    Conv [out, in, kh, kw]: groups over input channels (row) or output channels (column).
    Ties go to the lower index (stable sort), so masks are reproducible.
    """
    if mode not in ("row", "column"):
        raise ConfigError(f"N:M mode must be row or column, got {mode!r}")
    w = weight.detach().abs()
    dim = 1 if mode == "row" else 0
    w = w.movedim(dim, -1)
    length = w.shape[-1]
    if length % m:
        raise ConfigError(
            f"N:M {n}:{m}: group length {length} (dim {dim} of {tuple(weight.shape)}) is not divisible by {m}"
        )
    groups = w.reshape(-1, m)
    if min(n, m - n) <= 2:
        mask = _pick_few(groups, n)
    else:
        keep = torch.sort(groups, dim=-1, descending=True, stable=True).indices[:, :n]
        mask = torch.zeros_like(groups, dtype=torch.bool).scatter_(-1, keep, True)
    return mask.reshape(w.shape).movedim(-1, dim)


def _pick_few(groups: torch.Tensor, n: int) -> torch.Tensor:
    """Same result as the stable descending sort, by repeated argmax (first max wins) when few
    entries are kept, or repeated argmin from the end (last min loses first) when few are dropped."""
    m = groups.shape[-1]
    if n <= m - n:
        work, mask = groups.clone(), torch.zeros_like(groups, dtype=torch.bool)
        for _ in range(n):
            i = work.argmax(-1, keepdim=True)
            mask.scatter_(-1, i, True)
            work.scatter_(-1, i, float("-inf"))
        return mask
    work, drop = groups.flip(-1).clone(), torch.zeros_like(groups, dtype=torch.bool)
    for _ in range(m - n):
        i = work.argmin(-1, keepdim=True)
        drop.scatter_(-1, i, True)
        work.scatter_(-1, i, float("inf"))
    return ~drop.flip(-1)


# ---------------------------------------------------------------- schedules
def beta_at(recipe: str, t: int, alpha: float) -> float:
    """Weight of the pruned entries in the forward pass at optimizer step t (after the dense phase)."""
    if recipe == "mdgf-exp":
        return math.exp(-alpha * max(t, 0))
    if recipe == "mdgf-linear":
        return max(0.0, 1.0 - alpha * max(t, 0))
    return 0.0


def sdgf_frames(n: int, m: int, kind: str = "stepwise") -> list[tuple[int, int]]:
    """Stepwise 1:8 -> 7:8, 4:8, 2:8, 1:8 (log2(M/N)+1 frames); geometric 1:8 -> 8:64, 4:32, 2:16, 1:8."""
    ratio = m // n
    if m % n or ratio & (ratio - 1):
        raise ConfigError(f"SDGF needs M/N to be a power of two, got {n}:{m}")
    if kind == "stepwise":
        return [(m - 1, m)] + [(m >> k, m) for k in range(1, int(math.log2(ratio)) + 1)]
    if kind == "geometric":
        return [(n << (3 - k), m << (3 - k)) for k in range(4)]
    raise ConfigError(f"SDGF schedule must be stepwise or geometric, got {kind!r}")


def sdgf_schedule(
    n: int, m: int, kind: str, total: int, dense: int = 0, finetune: int = 0
) -> list[tuple[int, int, int]]:
    """[(start, N_k, M_k)]: the span total - dense - finetune cut into equal frames."""
    frames = sdgf_frames(n, m, kind)
    span = total - dense - finetune
    if span < len(frames):
        raise ConfigError(f"SDGF: {span} steps cannot hold {len(frames)} frames")
    return [(dense + (k * span) // len(frames), nk, mk) for k, (nk, mk) in enumerate(frames)]


# ---------------------------------------------------------------- modules
class _NMMixin:
    """State set by the controller once per optimizer step; the forward only reads it."""

    def _init_nm(self, n: int, m: int, mode: str, eval_binary: bool = True) -> None:
        self.n, self.m, self.mode, self.beta = n, m, mode, 0.0
        self.dense, self.eval_binary = False, eval_binary
        self.last_mask: torch.Tensor | None = None
        self._cache: tuple | None = None

    def mask(self) -> torch.Tensor:
        """The N:M mask of the current weight, cached until the weight changes in place (optimizer
        steps bump ``weight._version``; edits through ``.data`` do not: call ``invalidate()``)."""
        w = self.weight
        key = (w._version, w.data_ptr(), self.n, self.m, self.mode)
        if self._cache is None or self._cache[0] != key:
            self._cache = (key, nm_mask(w, self.n, self.m, self.mode))
        return self._cache[1]

    def invalidate(self) -> None:
        self._cache = None

    def effective_weight(self) -> torch.Tensor:
        w = self.weight
        if self.dense:
            return w
        mask = self.mask()  # recomputed every forward from the detached dense weight
        if self.training:
            self.last_mask = mask
        beta = 0.0 if (self.eval_binary and not self.training) else self.beta
        keep = mask.to(w.dtype) if beta == 0 else mask.to(w.dtype) + beta * (~mask).to(w.dtype)
        return w + (w * keep - w).detach()  # masked value, identity gradient

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, nm={self.n}:{self.m}, mode={self.mode}"


class NMLinear(_NMMixin, nn.Linear):
    """nn.Linear whose forward weight is W*(M + beta(1-M)); the bias is kept."""

    def __init__(self, in_features, out_features, bias=True, n=2, m=4, mode="row", **kw):
        nn.Linear.__init__(self, in_features, out_features, bias=bias, **kw)
        self._init_nm(n, m, mode)

    @classmethod
    def from_linear(cls, lin: nn.Linear, n: int, m: int, mode: str = "row") -> "NMLinear":
        """Wrap an existing Linear, sharing its Parameter objects (optimizers built before still work)."""
        nm_mask(lin.weight, n, m, mode)  # validates divisibility now, not at the first forward
        new = cls.__new__(cls)
        nn.Module.__init__(new)
        new.in_features, new.out_features = lin.in_features, lin.out_features
        new.register_parameter("weight", lin.weight)
        new.register_parameter("bias", lin.bias)
        new._init_nm(n, m, mode)
        new.train(lin.training)
        return new

    def forward(self, x):
        return F.linear(x, self.effective_weight(), self.bias)


class NMConv2d(_NMMixin, nn.Conv2d):
    """nn.Conv2d with N:M groups over input channels (row mode)."""

    def __init__(self, *args, n=2, m=4, mode="row", **kw):
        nn.Conv2d.__init__(self, *args, **kw)
        self._init_nm(n, m, mode)

    def forward(self, x):
        return self._conv_forward(x, self.effective_weight(), self.bias)


def sparse_layers(model: nn.Module) -> dict[str, _NMMixin]:
    return {name: mod for name, mod in model.named_modules() if isinstance(mod, _NMMixin)}


def _module_or_none(block: nn.Module, path: str) -> nn.Module | None:
    """The block's module at ``path``, or None where this block lacks it (an MoE block has no dense FFN)."""
    try:
        return block.get_submodule(path)
    except AttributeError:
        return None


def default_targets(model: nn.Module, targets: str = "ffn", layers: Sequence[int] | None = None) -> list[str]:
    """Module names to sparsify. Transformers: the FFN projections of each (chosen) block, from the
    architecture table (``ffn+qkv`` adds Q/K/V); attention output, embeddings and head stay dense;
    only nn.Linear layers (GPT-2's Conv1D is skipped). Other models: every nn.Linear but the last (the head)."""
    try:
        spec, blocks = arch_for(model), get_blocks(model)
    except ArchitectureError:
        names = [n for n, mod in model.named_modules() if isinstance(mod, nn.Linear)]
        return names[:-1]
    prefix = {id(mod): name for name, mod in model.named_modules()}
    chosen = range(len(blocks)) if layers is None else layers
    rel = list(spec.mlp_targets)
    if targets == "ffn+qkv":
        rel += list(dict.fromkeys(p for p in (spec.query, spec.key, spec.value) if p))
    elif targets != "ffn":
        raise ConfigError(f"--nm-targets must be ffn or ffn+qkv (or a comma-separated module list), got {targets!r}")
    out = []
    for i in chosen:
        if not 0 <= i < len(blocks):
            raise ConfigError(f"--nm-layers: block {i} does not exist (model has {len(blocks)})")
        out += [f"{prefix[id(blocks[i])]}.{r}" for r in rel if isinstance(_module_or_none(blocks[i], r), nn.Linear)]
    return out


def sparsify(
    model: nn.Module, n: int, m: int, names: Sequence[str] | None = None, mode: str = "row"
) -> dict[str, NMLinear]:
    """Replace the named nn.Linear modules (default: ``default_targets``) by NMLinear in place."""
    names = default_targets(model) if names is None else list(names)
    if not names:
        raise ConfigError("N:M sparsity found no Linear layer to sparsify")
    for name in names:
        try:
            lin = model.get_submodule(name)
        except AttributeError:
            raise ConfigError(f"--nm-targets: {type(model).__name__} has no module {name!r}") from None
        if isinstance(lin, NMLinear):
            continue
        if not isinstance(lin, nn.Linear):
            raise ConfigError(f"N:M target {name!r} is a {type(lin).__name__}, not nn.Linear")
        parent, _, attr = name.rpartition(".")
        setattr(model.get_submodule(parent) if parent else model, attr, NMLinear.from_linear(lin, n, m, mode))
    return sparse_layers(model)


@torch.no_grad()
def export_masked(model: nn.Module) -> nn.Module:
    """Bake the binary mask into the weights and put plain nn.Linear back (for export)."""
    for name, mod in list(sparse_layers(model).items()):
        lin = nn.Linear(mod.in_features, mod.out_features, bias=mod.bias is not None)
        lin.weight = nn.Parameter(mod.weight * mod.mask().to(mod.weight.dtype))
        lin.bias = mod.bias
        parent, _, attr = name.rpartition(".")
        setattr(model.get_submodule(parent) if parent else model, attr, lin)
    return model


# ---------------------------------------------------------------- diagnostics
def mask_flip_rate(prev: torch.Tensor, now: torch.Tensor) -> float:
    """SAD: ||M_t - M_{t-1}||_1 / numel."""
    return float((prev != now).float().mean())


def grad_cv(norms: Sequence[float] | torch.Tensor) -> float:
    """std / mean of per-step gradient norms (population std)."""
    x = torch.as_tensor(norms, dtype=torch.float64)
    return float(x.std(unbiased=False) / x.mean()) if len(x) and float(x.mean()) > 0 else 0.0


def pruned_mag_ratio(weight: torch.Tensor, mask: torch.Tensor) -> float:
    """mean |w| pruned / mean |w| kept."""
    a = weight.detach().abs()
    n_kept = int(mask.sum())
    n_pruned = mask.numel() - n_kept
    if not n_kept or not n_pruned:
        return 0.0
    kept = float((a * mask).sum())
    return ((float(a.sum()) - kept) / n_pruned) / (kept / n_kept)


class FlipRateMeter:
    """Streaming SAD: feed the mask after each optimizer step."""

    def __init__(self):
        self.prev: torch.Tensor | None = None
        self.history: list[float] = []

    def update(self, mask: torch.Tensor) -> float:
        rate = 0.0 if self.prev is None or self.prev.shape != mask.shape else mask_flip_rate(self.prev, mask)
        if self.prev is not None:
            self.history.append(rate)
        self.prev = mask.clone()
        return rate


class GradNormCV:
    """Rolling CV of the gradient norm over the last ``window`` steps."""

    def __init__(self, window: int = 200):
        self.norms: deque[float] = deque(maxlen=window)

    def update(self, norm: float) -> None:
        self.norms.append(float(norm))

    def cv(self) -> float:
        return grad_cv(list(self.norms))


# ---------------------------------------------------------------- the remedy
class NMSparsity(Remedy):
    """N:M sparse training of chosen Linear layers with one of RECIPES."""

    name = "nm-sparsity"
    options = {
        "nm": Option(str, "2:4", "N:M pattern, e.g. 2:4, 1:8, 1:32", "pattern"),
        "nm_recipe": Option(str, "mdgf-exp", "ste|sr-ste|mdgf-linear|mdgf-exp|sdgf-stepwise|sdgf-geometric", "recipe"),
        "nm_alpha": Option(
            float, 1e-4, "MDGF decay rate alpha per optimizer step", "alpha", Bound(0, "a decay rate", integer=False)
        ),
        "nm_mode": Option(str, "row", "group along inputs (row) or outputs (column)", "mode"),
        "nm_dense_steps": Option(
            int, 0, "optimizer steps trained dense before masking", "dense_steps", Bound(0, "steps")
        ),
        "nm_final_steps": Option(
            int,
            0,
            "last steps forced to beta=0 and the target pattern (needs total steps)",
            "final_steps",
            Bound(0, "steps"),
        ),
        "nm_total_steps": Option(
            int, None, "total optimizer steps (needed by SDGF and the final phase)", "total_steps", Bound(1, "steps")
        ),
        "nm_srste_lambda": Option(
            float, 2e-4, "SR-STE decay lambda_W on pruned weights", "srste_lambda", Bound(0, "a decay", integer=False)
        ),
        "nm_targets": Option(str, "ffn", "ffn|ffn+qkv or comma-separated module names", "targets"),
        "nm_layers": Option(str, None, "comma-separated block indices (default: all)", "layers"),
    }

    def __init__(
        self,
        pattern: str | tuple[int, int] = "2:4",
        recipe: str = "mdgf-exp",
        alpha: float = 1e-4,
        mode: str = "row",
        dense_steps: int = 0,
        final_steps: int = 0,
        total_steps: int | None = None,
        srste_lambda: float = 2e-4,
        targets: str | Sequence[str] | None = "ffn",
        layers: str | Sequence[int] | None = None,
        cv_window: int = 200,
    ):
        self.n, self.m = parse_pattern(pattern) if isinstance(pattern, str) else pattern
        if recipe not in RECIPES:
            raise ConfigError(f"--nm-recipe must be one of {', '.join(RECIPES)}, got {recipe!r}")
        if mode not in ("row", "column"):
            raise ConfigError(f"--nm-mode must be row or column, got {mode!r}")
        if recipe.startswith("sdgf") or final_steps:
            if not total_steps:
                raise ConfigError(f"--nm-recipe {recipe} with final steps {final_steps} needs --nm-total-steps")
        self.recipe, self.alpha, self.mode = recipe, float(alpha), mode
        self.dense_steps, self.final_steps, self.total_steps = int(dense_steps), int(final_steps), total_steps
        self.srste_lambda = float(srste_lambda)
        if isinstance(layers, str):
            try:
                layers = [int(v) for v in layers.split(",") if v.strip()]
            except ValueError:
                raise ConfigError(
                    f"--nm-layers expects comma-separated block indices like 0,2, got {layers!r}"
                ) from None
        self.targets, self.layers = targets, layers
        self.schedule = (
            sdgf_schedule(self.n, self.m, recipe.split("-")[1], total_steps, dense_steps, final_steps)
            if recipe.startswith("sdgf")
            else None
        )
        self.layers_: dict[str, NMLinear] = {}
        self.flips: dict[str, FlipRateMeter] = {}
        self.gnorm: dict[str, GradNormCV] = {}
        self.cv_window = cv_window
        self.t = 0
        self._last: dict[str, float] = {}

    # schedule -------------------------------------------------------
    def state_at(self, step: int) -> tuple[bool, float, int, int]:
        """(dense, beta, N, M) for 0-based optimizer step ``step``."""
        t = step - self.dense_steps
        if t < 0:
            return True, 1.0, self.m, self.m
        final = self.total_steps is not None and self.final_steps and step >= self.total_steps - self.final_steps
        if final:
            return False, 0.0, self.n, self.m
        n, m = self.n, self.m
        if self.schedule is not None:
            for start, nk, mk in self.schedule:
                if step >= start:
                    n, m = nk, mk
        return False, beta_at(self.recipe, t, self.alpha), n, m

    def _apply(self, step: int) -> None:
        dense, beta, n, m = self.state_at(step)
        for mod in self.layers_.values():
            mod.dense, mod.beta, mod.n, mod.m = dense, beta, n, m

    # hooks ----------------------------------------------------------
    def wrap_model(self, model):
        names = None
        if isinstance(self.targets, str) and self.targets not in ("ffn", "ffn+qkv"):
            names = [s.strip() for s in self.targets.split(",") if s.strip()]
        elif not isinstance(self.targets, str) and self.targets is not None:
            names = list(self.targets)
        if names is None:
            names = default_targets(model, self.targets or "ffn", self.layers)
        self.layers_ = sparsify(model, self.n, self.m, names, self.mode)
        if self.schedule is not None:
            for _, nk, mk in self.schedule:
                for mod in self.layers_.values():
                    nm_mask(mod.weight, nk, mk, self.mode)  # every frame must divide the layer
        self.flips = {k: FlipRateMeter() for k in self.layers_}
        self.gnorm = {k: GradNormCV(self.cv_window) for k in self.layers_}
        self._apply(0)
        for k, mod in self.layers_.items():
            if not mod.dense:
                self.flips[k].update(mod.mask())
        return model

    @torch.no_grad()
    def after_backward(self, model, step):
        for k, mod in self.layers_.items():
            g = mod.weight.grad
            if g is None:
                continue
            self.gnorm[k].update(float(g.norm()))
            if self.recipe == "sr-ste" and not mod.dense and self.srste_lambda:
                mask = mod.mask()
                g.add_(self.srste_lambda * (~mask).to(g.dtype) * mod.weight)

    @torch.no_grad()
    def after_step(self, model, optimizer, step, batch):
        self.t = step + 1
        self._apply(self.t)  # beta advances once per optimizer step, never per forward
        sads, flips, total, ratios = {}, 0.0, 0, []
        for k, mod in self.layers_.items():
            if mod.dense:
                continue
            mask = mod.mask()
            sads[k] = self.flips[k].update(mask)
            flips += sads[k] * mask.numel()
            total += mask.numel()
            ratios.append(pruned_mag_ratio(mod.weight, mask))
        dense, beta, n, m = self.state_at(self.t)
        out = {"nm.beta": beta, "nm.n": float(n), "nm.m": float(m), "nm.density": 1.0 if dense else n / m}
        if total:
            out["nm.sad"] = flips / total
            out["nm.pruned_mag_ratio"] = sum(ratios) / len(ratios)
            out.update({f"nm.sad.{k}": v for k, v in sads.items()})
        cvs = {k: g.cv() for k, g in self.gnorm.items() if g.norms}
        if cvs:
            out["nm.grad_cv"] = sum(cvs.values()) / len(cvs)
            out.update({f"nm.grad_cv.{k}": v for k, v in cvs.items()})
        self._last = out

    def metrics(self) -> dict[str, float]:
        return dict(self._last)
