"""ReDo (Sokar et al., arXiv 2302.12902): dormant units and their recycling.

A ReLU unit that outputs ~0 on the data gets ~0 gradient into its incoming weights, so it can never
recover; with non-stationary targets the dead share ratchets up. The tau-dormant score compares a
unit's mean |post-activation| to its layer's mean (so tau does not depend on width); recycling
re-draws a dormant unit's incoming weights and zeroes its bias and outgoing weights, which is
function-preserving for dead units, and clears Adam's moments at the touched entries.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import nn

from ..errors import ConfigError
from ..metrics.dormant import (  # the measurement lives with the metrics; this module recycles
    DormantAccumulator,
    UnitLayer,
    dormant_fraction,
    dormant_fractions,
    dormant_mask,
    dormant_scores,
    find_units,
    layer_scores,
    mlp_units,
    score_histogram,
    transformer_units,
    unit_means,
)
from ..validate import Bound
from .base import Option, Remedy

__all__ = [
    "DormantAccumulator",
    "ReDo",
    "UnitLayer",
    "dormant_fraction",
    "dormant_fractions",
    "dormant_mask",
    "dormant_scores",
    "expand_to_inputs",
    "find_units",
    "layer_scores",
    "mlp_units",
    "recycle",
    "score_histogram",
    "transformer_units",
    "unit_means",
]


# ---------------------------------------------------------------- recycling
def by_output(layer: nn.Module, tensor: torch.Tensor) -> torch.Tensor:
    """``tensor`` (a layer's weight, or optimizer state shaped like it) as [out, in, ...].
    transformers' Conv1D (GPT-2) stores its weight as [in, out]: a transposed view, writes go through."""
    return tensor.T if type(layer).__name__ == "Conv1D" and tensor.dim() == 2 else tensor


def _reinit_rows(weight: torch.Tensor, rows: torch.Tensor, std: float | None, mode: str) -> None:
    fresh = torch.empty_like(weight)
    if std is not None:
        nn.init.normal_(fresh, 0.0, std)
    elif mode == "xavier":
        nn.init.xavier_uniform_(fresh)
    else:  # torch's default Linear/Conv init: U(+-1/sqrt(fan_in))
        nn.init.kaiming_uniform_(fresh, a=math.sqrt(5))
    weight[rows] = fresh[rows]


def _reset_adam(optimizer, layer: nn.Module, param: torch.Tensor, index, adam_step: str) -> None:
    state = optimizer.state.get(param) if optimizer is not None else None
    if not state:
        return
    for key in ("exp_avg", "exp_avg_sq", "max_exp_avg_sq"):
        if key in state:
            by_output(layer, state[key])[index] = 0
    if adam_step == "reset_tensor" and "step" in state:
        if torch.is_tensor(state["step"]):
            state["step"].zero_()
        else:
            state["step"] = 0


def expand_to_inputs(dead: torch.Tensor, next_layer: nn.Module) -> torch.Tensor:
    """Mask over the next layer's inputs. Conv -> flatten -> Linear (NCHW): each channel owns H*W
    consecutive columns, so repeat each entry H*W times in a row (never tile)."""
    fan_in = by_output(next_layer, next_layer.weight).shape[1]
    if fan_in % dead.numel():
        raise ConfigError(f"next layer has {fan_in} inputs, not a multiple of {dead.numel()} units")
    return dead.repeat_interleave(fan_in // dead.numel())


def rows_of_units(dead: torch.Tensor, layer: nn.Module) -> torch.Tensor:
    """Mask over an incoming layer's output rows. A fused gate/up projection (Phi-3's gate_up_proj,
    ModernBERT's Wi) holds the gate half then the up half: unit i owns rows i and units + i."""
    rows = by_output(layer, layer.weight).shape[0]
    if rows == dead.numel():
        return dead
    if rows % dead.numel():
        raise ConfigError(f"incoming layer has {rows} output rows, not a multiple of {dead.numel()} units")
    return dead.repeat(rows // dead.numel())


@torch.no_grad()
def recycle(
    unit: UnitLayer, dead: torch.Tensor, optimizer=None, adam_step: str = "reset_tensor", init: str = "default"
) -> int:
    """Recycle the ``dead`` units of one hidden layer; returns how many were recycled. Every
    incoming layer (up, and gate in gated FFNs) gets fresh rows and a zero bias there; the
    outgoing weights of the units are zeroed, so dead units are recycled without changing the output."""
    n = int(dead.sum())
    if n == 0:
        return 0
    for layer in unit.incoming:
        rows = rows_of_units(dead, layer)
        _reinit_rows(by_output(layer, layer.weight), rows, unit.init_std, init)
        _reset_adam(optimizer, layer, layer.weight, rows, adam_step)
        if layer.bias is not None:
            layer.bias[rows] = 0
            _reset_adam(optimizer, layer, layer.bias, rows, adam_step)
    nxt = unit.next
    cols = expand_to_inputs(dead, nxt)
    by_output(nxt, nxt.weight)[:, cols] = 0  # the next layer's bias is never touched
    _reset_adam(optimizer, nxt, nxt.weight, (slice(None), cols), adam_step)
    return n


class ReDo(Remedy):
    """Every F optimizer steps recycle the tau-dormant units of every hidden layer, scored on the
    current batch (or a fixed ``score_batch``). With n = step + 1 optimizer steps done, it fires
    when n % F == 0 and start <= n < end."""

    name = "redo"
    options = {
        "redo_tau": Option(
            float,
            0.025,
            "dormancy threshold tau (0.1 for high replay / fast drift)",
            "tau",
            Bound(0, "a dormancy threshold", integer=False),
        ),
        "redo_every": Option(int, 1000, "recycle every F optimizer steps", "every", Bound(1, "steps")),
        "redo_start": Option(int, 0, "first step at which recycling may fire", "start", Bound(0, "a step")),
        "redo_end": Option(int, None, "no recycling from this step on", "end", Bound(1, "a step")),
        "redo_adam_step": Option(
            str, "reset_tensor", "Adam step count of touched tensors: reset_tensor|keep", "adam_step"
        ),
        "redo_init": Option(
            str, "default", "re-init of incoming weights: default|xavier (BERT: normal(0, initializer_range))", "init"
        ),
    }

    def __init__(
        self,
        tau: float = 0.025,
        every: int = 1000,
        start: int = 0,
        end: int | None = None,
        adam_step: str = "reset_tensor",
        init: str = "default",
        units: Sequence[UnitLayer] | None = None,
        score_batch=None,
        log_taus: Sequence[float] = (0.0, 0.025, 0.1),
    ):
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
        self._last = {
            "redo.dormant_frac": sum(fr) / len(fr),
            "redo.recycled": float(rec),
            "redo.dead_frac": sum(dormant_fraction(s, 0.0) for s in scores) / len(scores),
        }
        self._last.update({f"redo.dormant_frac.{u.name}": f for u, f in zip(self.units, fr)})
        self.history.append(row)

    def metrics(self) -> dict[str, float]:
        return dict(self._last)
