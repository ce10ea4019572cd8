"""τ-dormant hidden units per layer (ReDo's diagnostic, Sokar et al., arXiv 2302.12902).

A unit's score is its mean |h| over the data (non-padding tokens) divided by its layer's mean over
units, so τ does not depend on width; it is dormant when the score is ≤ τ. Like the other metrics:
pure functions, a streaming accumulator of sums, and a thin probe plugin. The unit discovery for
transformers reads the FFN layout from the architecture table: the units are the input of each
block's ``ffn_down``. The ReDo remedy (``inflora.remedies.redo``) scores and recycles with these.
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable, Iterable, Sequence

import torch
from torch import nn

from ..errors import ArchitectureError, ConfigError
from ..models import get_blocks, get_ffn, arch_for
from .accumulate import ProbePlugin, SumAccumulator

EPS = 1e-9
TAUS = (0.025, 0.1)
_ACTS = (nn.ReLU, nn.GELU, nn.LeakyReLU, nn.ELU, nn.SiLU, nn.Tanh, nn.Sigmoid, nn.Softplus, nn.ReLU6)


# ---------------------------------------------------------------- pure functions
def masked_abs_sums(
    acts: torch.Tensor, channel_dim: int = 1, mask: torch.Tensor | None = None
) -> tuple[torch.Tensor, float]:
    """(sum |h_i| per unit, number of positions summed) over every dim but ``channel_dim``;
    ``mask`` [B, T] leaves padding out. The one place the masked |activation| sum is computed."""
    a = acts.detach().float().abs().movedim(channel_dim, -1)
    if mask is None:
        return a.reshape(-1, a.shape[-1]).sum(0), a.numel() / a.shape[-1]
    if a.dim() == 2 and mask.dim() == 2 and a.shape[0] == mask.numel():
        mask = mask.reshape(-1)  # token-flattened FFNs (OPT, MoE shared experts) see [B*T, units]
    m = mask.to(a.dtype).reshape(*mask.shape, *([1] * (a.dim() - mask.dim())))
    return (a * m).reshape(-1, a.shape[-1]).sum(0), float(m.sum())


def unit_means(acts: torch.Tensor, channel_dim: int = 1, mask: torch.Tensor | None = None) -> torch.Tensor:
    """E|h_i| per unit over every other dim (batch, space, tokens); ``mask`` [B, T] skips padding."""
    total, count = masked_abs_sums(acts, channel_dim, mask)
    return total / max(count, 1.0)


def normalise_scores(means: torch.Tensor) -> torch.Tensor:
    return means / (means.mean() + EPS)


def dormant_scores(acts: torch.Tensor, channel_dim: int = 1, mask: torch.Tensor | None = None) -> torch.Tensor:
    """s_i = E|h_i| / (mean_k E|h_k| + 1e-9) on *post-activation* outputs."""
    return normalise_scores(unit_means(acts, channel_dim, mask))


def dormant_mask(scores: torch.Tensor, tau: float) -> torch.Tensor:
    """tau = 0 means dead (isclose to 0); otherwise s <= tau."""
    if tau == 0:
        return torch.isclose(scores, torch.zeros_like(scores))
    return scores <= tau


def dormant_fraction(scores: torch.Tensor, tau: float) -> float:
    return float(dormant_mask(scores, tau).float().mean())


def score_histogram(scores: torch.Tensor, bins: int = 20, max_score: float = 2.0):
    """(counts, edges) of unit scores on [0, max_score]; scores above land in the last bin."""
    s = scores.detach().float().clamp(0, max_score)
    return torch.histc(s, bins=bins, min=0.0, max=max_score), torch.linspace(0.0, max_score, bins + 1)


# ---------------------------------------------------------------- accumulator
class DormantAccumulator:
    """Streams sum |h| per unit over batches, so scores over many batches equal one big batch."""

    def __init__(self, channel_dim: int = 1):
        self.channel_dim = channel_dim
        self.total: torch.Tensor | None = None
        self.count = 0.0

    @torch.no_grad()
    def update(self, acts: torch.Tensor, mask: torch.Tensor | None = None) -> None:
        s, n = masked_abs_sums(acts, self.channel_dim, mask)
        self.total = s if self.total is None else self.total + s
        self.count += n

    def scores(self) -> torch.Tensor:
        if self.total is None:
            raise ConfigError("no activations were accumulated")
        return normalise_scores(self.total / max(self.count, 1.0))

    def fractions(self, taus: Sequence[float] = (0.0, 0.025, 0.1)) -> dict[float, float]:
        s = self.scores()
        return {t: dormant_fraction(s, t) for t in taus}


# ---------------------------------------------------------------- unit discovery
@dataclass
class UnitLayer:
    """A hidden layer of units: ``incoming`` layers make them, ``next`` consumes them.

    ``act`` is the module whose output is h (plain MLPs); when it is None, h is ``next``'s input
    (transformer FFNs, gated or not). Gated FFNs have two incoming layers (gate and up)."""

    name: str
    incoming: tuple[nn.Module, ...]  # nn.Linear / nn.Conv2d / transformers' Conv1D producing the units
    next: nn.Module  # consumer of the units
    act: nn.Module | None = None
    channel_dim: int = 1  # where the unit axis is in h (-1 for token-major transformers)
    init_std: float | None = None  # normal(0, std) re-init (BERT); None: the torch default init

    def watch(self, fn: Callable[[torch.Tensor], None]):
        """Call ``fn(h)`` on every forward; returns the hook handle."""
        if self.act is not None:
            return self.act.register_forward_hook(lambda m, args, out: fn(out))
        return self.next.register_forward_pre_hook(lambda m, args: fn(args[0]))


def transformer_units(model: nn.Module) -> list[UnitLayer]:
    """FFN units of every block, from the model's spec (ArchitectureError if undiscoverable). An MoE
    block without shared experts has no dense FFN: it is left out (its experts are not units here)."""
    spec = arch_for(model)
    std = getattr(getattr(model, "config", None), "initializer_range", None)
    out = []
    for i, block in enumerate(get_blocks(model)):
        ffn = get_ffn(block, spec)
        if ffn is not None:
            out.append(UnitLayer(f"block.{i}", ffn.inputs, ffn.down, None, -1, std))
    return out


def mlp_units(model: nn.Module) -> list[UnitLayer]:
    """Hidden layers of every nn.Sequential: a Linear/Conv2d followed by an activation and,
    later in the same Sequential, another Linear/Conv2d. The output layer is never included."""
    out = []
    for sname, seq in model.named_modules():
        if not isinstance(seq, nn.Sequential):
            continue
        mods = list(seq.named_children())
        for k, (name, mod) in enumerate(mods):
            if not isinstance(mod, (nn.Linear, nn.Conv2d)):
                continue
            act = next((m for _, m in mods[k + 1 : k + 2] if isinstance(m, _ACTS)), None)
            nxt = next((m for _, m in mods[k + 1 :] if isinstance(m, (nn.Linear, nn.Conv2d))), None)
            if act is not None and nxt is not None:
                out.append(UnitLayer(f"{sname}.{name}".lstrip("."), (mod,), nxt, act, 1))
    return out


def find_units(model: nn.Module) -> list[UnitLayer]:
    """Transformer FFN units when the family is in the table, else the hidden layers of MLPs."""
    try:
        return transformer_units(model)
    except ArchitectureError:
        units = mlp_units(model)
        if not units:
            raise ConfigError(
                f"ReDo found no hidden layers in {type(model).__name__}; pass layers explicitly"
            ) from None
        return units


# ---------------------------------------------------------------- scoring a model
@contextmanager
def _capture(units: Sequence[UnitLayer]):
    store: dict[int, list[torch.Tensor]] = {i: [] for i in range(len(units))}
    hooks = [u.watch(lambda h, i=i: store[i].append(h.detach())) for i, u in enumerate(units)]
    try:
        yield store
    finally:
        for h in hooks:
            h.remove()


@contextmanager
def _eval_mode(model: nn.Module):
    was = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was)


def _run(model: nn.Module, batch):
    if isinstance(batch, dict):
        return model(**{k: v for k, v in batch.items() if k not in ("labels", "label")})
    if isinstance(batch, (list, tuple)):
        return model(batch[0])
    return model(batch)


@torch.no_grad()
def layer_scores(model: nn.Module, batches: Iterable, units: Sequence[UnitLayer] | None = None) -> list[torch.Tensor]:
    """Per-layer unit scores accumulated over batches, no grad, no dropout (eval mode)."""
    units = list(units) if units is not None else find_units(model)
    accs = [DormantAccumulator(u.channel_dim) for u in units]
    if isinstance(batches, (dict, torch.Tensor)):
        batches = [batches]
    with _eval_mode(model), _capture(units) as store:
        for batch in batches:
            _run(model, batch)
            mask = batch.get("attention_mask") if isinstance(batch, dict) else None
            for i, acc in enumerate(accs):
                for o in store[i]:
                    acc.update(o, mask if mask is not None and o.dim() == 3 else None)
                store[i].clear()
    return [a.scores() for a in accs]


def dormant_fractions(model: nn.Module, batches: Iterable, tau: float | Sequence[float] = 0.025):
    """Per-layer dormant fractions (list, layer order), or {tau: list} when tau is a sequence.
    For BERT-like models the units are the post-GELU FFN units (GELU is never 0: use tau > 0)."""
    scores = layer_scores(model, batches)
    if isinstance(tau, (int, float)):
        return [dormant_fraction(s, tau) for s in scores]
    return {t: [dormant_fraction(s, t) for s in scores] for t in tau}


# ---------------------------------------------------------------- probe plugin
class DormantUnits(SumAccumulator):
    fields = ("abs_sum", "tokens")

    def compute_from(self, t: dict[str, torch.Tensor]) -> dict:
        if float(t["tokens"]) == 0 or t["abs_sum"].numel() < 2:
            return {f"dormant_frac_{tau}": math.nan for tau in TAUS}
        scores = normalise_scores((t["abs_sum"] / t["tokens"]).float())
        return {f"dormant_frac_{tau}": dormant_fraction(scores, tau) for tau in TAUS}


class DormantProbe(ProbePlugin):
    """Watches each block's FFN units (every family in the architecture table)."""

    name = "dormant"

    def attach(self, ctx) -> None:
        self.layers = [DormantUnits() for _ in ctx.blocks]
        for unit in transformer_units(ctx.inner):  # blocks without a dense FFN have no unit: matched by name

            def add(h, acc=self.layers[int(unit.name.split(".")[1])]):
                if ctx.active:  # a block run twice per forward (Dory, HRM) sums into one batch record
                    total, count = masked_abs_sums(h, -1, ctx.attention_mask)
                    acc.add_to_step(ctx.forwards, abs_sum=total, tokens=torch.tensor(count))

            self.handles.append(unit.watch(add))
