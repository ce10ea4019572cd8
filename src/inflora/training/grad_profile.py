"""One gradient-profile recorder for inflora's own loop and for any ``Trainer`` (``InflectionCallback``).

Every ``every`` optimizer steps the recorder switches a ``LayerProbe`` on for that step's own
micro-batches (no extra passes) and records, per block, the activation-gradient norm ‖∂L/∂h⁽ˡ⁾‖
(per token, padding excluded) and the pre-clip parameter-gradient norm ‖∇θ L‖, plus the embeddings
and head groups, the attention entropy streamed beside the run's own SDPA (issue 11), and the output
saturation of the step's own forward (``row["output"]``: accuracy, confidence, ‖p − y‖ of right and
wrong answers, ECE, ...; for a classifier also ‖∂L/∂h‖ split between the tokens of wrong and right
examples).

Parameter gradients are read as they are accumulated (``register_post_accumulate_grad_hook``): the
last call before the optimizer step is the step's whole gradient, before any clipping (Trainer clips
before its callbacks see the gradients). Under DDP those are each rank's local gradients, so on a
logged step the recorder keeps a copy and averages the copies across ranks, as DDP does; activation
sums are added across ranks and scaled by 1/world, because each rank's loss is the mean over its own
examples only. Every rank therefore records the numbers one process would record with the same
global batch. An fp16 loss scale is divided out (``loss_scale``).
"""

from __future__ import annotations

import logging
import math
from typing import Callable

import torch

from ..models.architectures import arch_for, hf_model
from ..probe import LayerProbe

log = logging.getLogger(__name__)


def _world() -> int:
    import torch.distributed as dist

    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def _all_reduce(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Sum over ranks (on ``device``: NCCL reduces only GPU tensors); ``t`` itself with one process."""
    import torch.distributed as dist

    if _world() == 1:
        return t
    moved = t.to(device)
    dist.all_reduce(moved)
    return moved.to(t.device)


class GradProfileRecorder:
    """``entropy``: also record each block's attention entropy on logged steps, streamed beside SDPA
    (the run keeps its attention kernel and speed). Families outside transformers' attention
    interface (MPNet) would need eager attention for every step, so there it is left out, with a log line."""

    def __init__(self, model, every: int = 10, *, loss_scale: Callable[[], float] | None = None, entropy: bool = True):
        self.every = max(1, int(every))
        spec = arch_for(hf_model(model))
        self.entropy = entropy and spec.attention_interface
        if entropy and not self.entropy:
            log.info(
                "attention entropy is not recorded during training: %s attention does not go through "
                "transformers' attention interface, and eager maps would slow every step",
                spec.family,
            )
        diagnostics = ["activation_grad", "output"] + (["attention_entropy"] if self.entropy else [])
        self.probe = LayerProbe(model, diagnostics, attention="streaming" if self.entropy else None)
        self.probe.ctx.active = False
        self.loss_scale = loss_scale
        self.world = _world()
        self.device = next(model.parameters()).device
        self.active = False
        self._handles: list = []
        self._grads: dict[int, torch.Tensor] = {}

    # ------------------------------------------------------------------ per step
    def start_step(self, step: int) -> bool:
        """Arm the hooks if ``step`` is a logged step; returns whether it is."""
        self._reset()
        if step % self.every != 0:
            return False
        self.active = self.probe.ctx.active = True
        for params in self.probe.ctx.groups.values():
            for _, p in params:
                if p.requires_grad:
                    self._handles.append(p.register_post_accumulate_grad_hook(self._record_grad))
        return True

    def finish_step(self, step: int, loss: float | None) -> dict | None:
        """The row of a logged step (call after its last backward, before clipping), else None."""
        if not self.active:
            return None
        n = self.probe.ctx.num_layers
        norms = self._param_norms()
        row = {
            "step": step,
            "loss": loss,
            "activation_grad_norm": self._token_means(
                self._plugin("activation_grad").layers, "token_norm_sum", "token_count"
            ),
            "param_grad_norm": [norms[f"block.{i}"] for i in range(n)],
            "param_grad_norm_embeddings": norms["embeddings"],
            "param_grad_norm_head": norms["head"],
            "output": self._output_numbers(),
        }
        if self.entropy:
            row["attention_entropy"] = self._entropies()
        row.update(self._wrong_right_split())
        self._reset()
        return row

    def cancel(self) -> None:
        self._reset()

    def close(self) -> None:
        self._reset()
        self.probe.close()

    # ------------------------------------------------------------------ internals
    def _record_grad(self, p: torch.nn.Parameter) -> None:
        g = p.grad.detach()
        # one process: the squared norm is enough; several: the tensor, to average it like DDP
        self._grads[id(p)] = g.float().clone() if self.world > 1 else g.float().pow(2).sum()

    def _param_norms(self) -> dict[str, float]:
        scale = float(self.loss_scale()) if self.loss_scale else 1.0
        out = {}
        for name, params in self.probe.ctx.groups.items():
            parts = []
            for _, p in params:
                if id(p) not in self._grads:
                    continue
                g = self._grads[id(p)]
                if self.world > 1:
                    g = _all_reduce(g, self.device).div_(self.world).pow(2).sum()
                parts.append(g)
            out[name] = math.sqrt(float(torch.stack(parts).sum())) / scale if parts else 0.0
        return out

    def _plugin(self, name: str):
        return next(p for p in self.probe.plugins if p.name == name)

    def _entropies(self) -> list[float]:
        """Mean attention entropy per block over the step's micro-batches (and ranks): head sums / queries."""
        totals = [acc.totals() for acc in self._plugin("attention_entropy").layers]
        sums = torch.tensor(
            [[float(t["raw_sum"].sum()), float(t["raw_count"].sum())] for t in totals], dtype=torch.float64
        )
        sums = _all_reduce(sums, self.device)
        return [float(s / n) if n else math.nan for s, n in sums.tolist()]

    def _token_means(self, accs, sum_key: str, count_key: str) -> list[float]:
        """Per layer: Σ per-token ‖∂L/∂h‖ / token count over the step's micro-batches and all ranks."""
        sums = torch.tensor(
            [[float(acc.totals()[sum_key]), float(acc.totals()[count_key])] for acc in accs], dtype=torch.float64
        )
        sums = _all_reduce(sums, self.device)
        scale = (float(self.loss_scale()) if self.loss_scale else 1.0) * self.world
        return [float(s / n) / scale if n else math.nan for s, n in sums.tolist()]

    def _wrong_right_split(self) -> dict:
        """A classifier's ‖∂L/∂h‖ per block on the tokens of wrong and of right examples, and the share
        of tokens in wrong examples (so activation_grad_norm = w·wrong + (1 − w)·right); {} for a causal LM."""
        split = self._plugin("output").layers
        if not any(len(acc) for acc in split):
            return {}
        t = split[0].totals()
        wrong, right = _all_reduce(
            torch.stack([t["wrong_tokens"].sum(), t["right_tokens"].sum()]), self.device
        ).tolist()
        return {
            "activation_grad_norm_wrong": self._token_means(split, "wrong_sum", "wrong_tokens"),
            "activation_grad_norm_correct": self._token_means(split, "right_sum", "right_tokens"),
            "wrong_token_share": wrong / (wrong + right) if wrong + right else math.nan,
        }

    def _output_numbers(self) -> dict:
        """The output-saturation numbers of the step's own batches (all ranks), without the histogram."""
        acc = self._plugin("output").summary_acc
        if not len(acc):  # no labels reached the model (e.g. a Trainer computing the loss itself)
            return {}
        totals = acc.totals()
        flat = _all_reduce(torch.cat([totals[k].reshape(-1) for k in acc.fields]), self.device)
        sizes = [totals[k].numel() for k in acc.fields]
        merged = dict(
            zip(acc.fields, (part.reshape(totals[k].shape) for part, k in zip(flat.split(sizes), acc.fields)))
        )
        numbers = acc.compute_from(merged)
        numbers.pop("histogram")
        return numbers

    def _reset(self) -> None:
        self.active = self.probe.ctx.active = False
        for plugin in self.probe.plugins:
            for acc in plugin.accumulators():
                acc.records.clear()
        for h in self._handles:
            h.remove()
        self._handles.clear()
        self._grads = {}
