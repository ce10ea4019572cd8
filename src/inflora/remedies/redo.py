"""ReDo (Sokar et al., arXiv 2302.12902): dormant units and their recycling.

A ReLU unit that outputs ~0 on the data gets ~0 gradient into its incoming weights, so it can never
recover; with non-stationary targets the dead share ratchets up. The tau-dormant score compares a
unit's mean |post-activation| to its layer's mean (so tau does not depend on width); recycling
re-draws a dormant unit's incoming weights and zeroes its bias and outgoing weights, which is
function-preserving for dead units, and clears Adam's moments at the touched entries.
"""
from __future__ import annotations

import math
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterable, Sequence

import torch
from torch import nn

from ..errors import ArchitectureError, ConfigError
from .base import Option, Remedy

EPS = 1e-9
_ACTS = (nn.ReLU, nn.GELU, nn.LeakyReLU, nn.ELU, nn.SiLU, nn.Tanh, nn.Sigmoid, nn.Softplus, nn.ReLU6)


# ---------------------------------------------------------------- scores
def unit_means(acts: torch.Tensor, channel_dim: int = 1, mask: torch.Tensor | None = None) -> torch.Tensor:
    """E|h_i| per unit over every other dim (batch, space, tokens); ``mask`` [B, T] skips padding."""
    a = acts.detach().float().abs().movedim(channel_dim, -1)
    if mask is not None:
        m = mask.to(a.dtype).reshape(*mask.shape, *([1] * (a.dim() - mask.dim())))
        return (a * m).reshape(-1, a.shape[-1]).sum(0) / m.sum().clamp_min(1)
    return a.reshape(-1, a.shape[-1]).mean(0)


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


class DormantAccumulator:
    """Streams sum |h| per unit over batches, so scores over many batches equal one big batch."""

    def __init__(self, channel_dim: int = 1):
        self.channel_dim = channel_dim
        self.total: torch.Tensor | None = None
        self.count = 0.0

    @torch.no_grad()
    def update(self, acts: torch.Tensor, mask: torch.Tensor | None = None) -> None:
        a = acts.detach().float().abs().movedim(self.channel_dim, -1)
        if mask is not None:
            m = mask.to(a.dtype).reshape(*mask.shape, *([1] * (a.dim() - mask.dim())))
            s, n = (a * m).reshape(-1, a.shape[-1]).sum(0), float(m.sum())
        else:
            s, n = a.reshape(-1, a.shape[-1]).sum(0), a.numel() / a.shape[-1]
        self.total = s if self.total is None else self.total + s
        self.count += n

    def scores(self) -> torch.Tensor:
        if self.total is None:
            raise ConfigError("no activations were accumulated")
        return normalise_scores(self.total / max(self.count, 1.0))

    def fractions(self, taus: Sequence[float] = (0.0, 0.025, 0.1)) -> dict[float, float]:
        s = self.scores()
        return {t: dormant_fraction(s, t) for t in taus}


# ---------------------------------------------------------------- layer discovery
@dataclass
class UnitLayer:
    """A hidden layer whose units can be recycled: ``layer`` -> (activation output) -> ``next``."""

    name: str
    layer: nn.Module          # nn.Linear or nn.Conv2d producing the units
    act: nn.Module            # module whose output is the post-activation h
    next: nn.Module           # consumer of the units (Linear or Conv2d)
    channel_dim: int = 1      # where the unit axis is in act's output (-1 for token-major transformers)
    init_std: float | None = None  # normal(0, std) re-init (BERT); None: the torch default init


_FFN_PATHS = (  # (incoming, activation output, outgoing) relative to one block
    ("intermediate.dense", "intermediate", "output.dense"),      # bert, roberta, electra, mpnet
    ("ffn.lin1", "ffn.activation", "ffn.lin2"),                   # distilbert
)


def transformer_units(model: nn.Module) -> list[UnitLayer]:
    """FFN units of every block (scored post-GELU), via the architecture table."""
    from ..models import get_blocks

    std = getattr(getattr(model, "config", None), "initializer_range", None)
    out = []
    for i, block in enumerate(get_blocks(model)):
        for inc, act, nxt in _FFN_PATHS:
            try:
                mods = [block.get_submodule(p) for p in (inc, act, nxt)]
            except AttributeError:
                continue
            out.append(UnitLayer(f"block.{i}", mods[0], mods[1], mods[2], -1, std))
            break
        else:
            raise ArchitectureError(f"block {i} of {type(model).__name__} has no known FFN layout for ReDo")
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
            act = next((m for _, m in mods[k + 1:k + 2] if isinstance(m, _ACTS)), None)
            nxt = next((m for _, m in mods[k + 1:] if isinstance(m, (nn.Linear, nn.Conv2d))), None)
            if act is not None and nxt is not None:
                out.append(UnitLayer(f"{sname}.{name}".lstrip("."), mod, act, nxt, 1))
    return out


def find_units(model: nn.Module) -> list[UnitLayer]:
    try:
        return transformer_units(model)
    except ArchitectureError:
        units = mlp_units(model)
        if not units:
            raise ConfigError(f"ReDo found no hidden layers in {type(model).__name__}; pass layers explicitly") from None
        return units


@contextmanager
def _capture(units: Sequence[UnitLayer]):
    store: dict[int, list[torch.Tensor]] = {i: [] for i in range(len(units))}
    hooks = [u.act.register_forward_hook(lambda m, a, o, i=i: store[i].append(o.detach()))
             for i, u in enumerate(units)]
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


# ---------------------------------------------------------------- recycling
def _reinit_rows(weight: torch.Tensor, rows: torch.Tensor, std: float | None, mode: str) -> None:
    fresh = torch.empty_like(weight)
    if std is not None:
        nn.init.normal_(fresh, 0.0, std)
    elif mode == "xavier":
        nn.init.xavier_uniform_(fresh)
    else:  # torch's default Linear/Conv init: U(+-1/sqrt(fan_in))
        nn.init.kaiming_uniform_(fresh, a=math.sqrt(5))
    weight[rows] = fresh[rows]


def _reset_adam(optimizer, param: torch.Tensor, index, adam_step: str) -> None:
    state = optimizer.state.get(param) if optimizer is not None else None
    if not state:
        return
    for key in ("exp_avg", "exp_avg_sq", "max_exp_avg_sq"):
        if key in state:
            state[key][index] = 0
    if adam_step == "reset_tensor" and "step" in state:
        if torch.is_tensor(state["step"]):
            state["step"].zero_()
        else:
            state["step"] = 0


def expand_to_inputs(dead: torch.Tensor, next_layer: nn.Module) -> torch.Tensor:
    """Mask over the next layer's inputs. Conv -> flatten -> Linear (NCHW): each channel owns H*W
    consecutive columns, so repeat each entry H*W times in a row (never tile)."""
    fan_in = next_layer.weight.shape[1]
    if fan_in % dead.numel():
        raise ConfigError(f"next layer has {fan_in} inputs, not a multiple of {dead.numel()} units")
    return dead.repeat_interleave(fan_in // dead.numel())


@torch.no_grad()
def recycle(unit: UnitLayer, dead: torch.Tensor, optimizer=None, adam_step: str = "reset_tensor",
            init: str = "default") -> int:
    """Recycle the ``dead`` units of one hidden layer; returns how many were recycled."""
    n = int(dead.sum())
    if n == 0:
        return 0
    layer, nxt = unit.layer, unit.next
    _reinit_rows(layer.weight, dead, unit.init_std, init)
    _reset_adam(optimizer, layer.weight, dead, adam_step)
    if layer.bias is not None:
        layer.bias[dead] = 0
        _reset_adam(optimizer, layer.bias, dead, adam_step)
    cols = expand_to_inputs(dead, nxt)
    nxt.weight[:, cols] = 0  # the next layer's bias is never touched
    _reset_adam(optimizer, nxt.weight, (slice(None), cols), adam_step)
    return n


class ReDo(Remedy):
    """Every F optimizer steps recycle the tau-dormant units of every hidden layer, scored on the
    current batch (or a fixed ``score_batch``). With n = step + 1 optimizer steps done, it fires
    when n % F == 0 and start <= n < end."""

    name = "redo"
    options = {
        "redo_tau": Option(float, 0.025, "dormancy threshold tau (0.1 for high replay / fast drift)", "tau"),
        "redo_every": Option(int, 1000, "recycle every F optimizer steps", "every"),
        "redo_start": Option(int, 0, "first step at which recycling may fire", "start"),
        "redo_end": Option(int, None, "no recycling from this step on", "end"),
        "redo_adam_step": Option(str, "reset_tensor", "Adam step count of touched tensors: reset_tensor|keep", "adam_step"),
        "redo_init": Option(str, "default", "re-init of incoming weights: default|xavier (BERT: normal(0, initializer_range))", "init"),
    }

    def __init__(self, tau: float = 0.025, every: int = 1000, start: int = 0, end: int | None = None,
                 adam_step: str = "reset_tensor", init: str = "default", units: Sequence[UnitLayer] | None = None,
                 score_batch=None, log_taus: Sequence[float] = (0.0, 0.025, 0.1)):
        if adam_step not in ("reset_tensor", "keep"):
            raise ConfigError(f"--redo-adam-step must be reset_tensor or keep, got {adam_step!r}")
        if init not in ("default", "xavier"):
            raise ConfigError(f"--redo-init must be default or xavier, got {init!r}")
        if every <= 0 or tau < 0:
            raise ConfigError(f"ReDo needs every > 0 and tau >= 0 (got every={every}, tau={tau})")
        self.tau, self.every, self.start, self.end = float(tau), int(every), int(start), end
        self.adam_step, self.init, self.units = adam_step, init, units
        self.score_batch, self.log_taus = score_batch, tuple(log_taus)
        self.history: list[dict] = []
        self._last: dict[str, float] = {}

    def wrap_model(self, model):
        if self.units is None:
            self.units = find_units(model)
        return model

    def due(self, step: int) -> bool:
        return step > 0 and step % self.every == 0 and self.start <= step and (self.end is None or step < self.end)

    def score(self, model, batch) -> list[torch.Tensor]:
        if self.units is None:
            self.units = find_units(model)
        return layer_scores(model, self.score_batch if self.score_batch is not None else batch, self.units)

    def after_step(self, model, optimizer, step, batch) -> None:
        step = step + 1  # optimizer steps done
        if not self.due(step):
            return
        scores = self.score(model, batch)
        rec, row = 0, {"step": step}
        for u, s in zip(self.units, scores):
            for t in self.log_taus:
                row[f"{u.name}@{t}"] = dormant_fraction(s, t)
            rec += recycle(u, dormant_mask(s, self.tau), optimizer, self.adam_step, self.init)
        fr = [dormant_fraction(s, self.tau) for s in scores]
        self._last = {"redo.dormant_frac": sum(fr) / len(fr), "redo.recycled": float(rec),
                      "redo.dead_frac": sum(dormant_fraction(s, 0.0) for s in scores) / len(scores)}
        self._last.update({f"redo.dormant_frac.{u.name}": f for u, f in zip(self.units, fr)})
        self.history.append(row)

    def metrics(self) -> dict[str, float]:
        return dict(self._last)
