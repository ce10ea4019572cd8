"""Gradient norms: where the backward signal shrinks (activations) and what each block receives (parameters)."""
from __future__ import annotations

import math
from typing import Iterable

import torch

from ..models.architectures import first_tensor
from .accumulate import ProbePlugin, SumAccumulator


def activation_grad_sums(grad: torch.Tensor, token_mask: torch.Tensor) -> tuple[float, float, float, float]:
    """For ∂L/∂h of one layer ([B, T, D]): (sum of per-token L2 norms over non-padding tokens, token count,
    squared Frobenius norm over non-padding tokens, 1 batch). Non-finite gradients give NaN sums."""
    g = grad.detach().float()
    m = token_mask.bool()
    per_token = g.norm(dim=-1)[m]
    return float(per_token.sum()), float(m.sum()), float(per_token.pow(2).sum()), 1.0


def activation_grad_norm(grad: torch.Tensor, token_mask: torch.Tensor) -> dict[str, float]:
    """Per-token L2 norm of ∂L/∂h averaged over non-padding tokens, and the batch Frobenius norm."""
    s, n, sq, _ = activation_grad_sums(grad, token_mask)
    return {"per_token": s / max(n, 1.0), "frobenius": math.sqrt(sq)}


def _shard_of(grad: torch.Tensor):
    """(local tensor, process group to sum over) for an FSDP2 gradient sharded over a device mesh;
    (grad, None) for an ordinary or replicated one."""
    if not torch.distributed.is_available():
        return grad, None
    from torch.distributed.tensor import DTensor

    if isinstance(grad, DTensor) and any(pl.is_shard() for pl in grad.placements):
        return grad.to_local(), grad.device_mesh.get_group()
    return (grad.to_local() if isinstance(grad, DTensor) else grad), None


def param_grad_norm(params: Iterable[torch.nn.Parameter]) -> float:
    """sqrt(Σ‖g‖²) over trainable parameters that received a gradient; 0 for a frozen group.
    Per-tensor norms are combined on the device: one host sync per group, no squared copies.
    FSDP2 gradients (sharded ``DTensor``s) count as the *full* gradient: the squared norms of this
    rank's shards are summed across the mesh (one all-reduce per group; every rank must call this)."""
    local, sharded, group = [], [], None
    for p in params:
        if p.requires_grad and p.grad is not None:
            g, g_group = _shard_of(p.grad.detach())
            (sharded if g_group is not None else local).append(torch.linalg.vector_norm(g, dtype=torch.float32))
            group = g_group or group
    if not sharded:
        return float(torch.linalg.vector_norm(torch.stack(local))) if local else 0.0
    total = torch.stack(sharded).pow(2).sum()
    torch.distributed.all_reduce(total, group=group)
    if local:
        total = total + torch.stack(local).pow(2).sum().to(total.device)
    return float(total.sqrt())


class _FiniteMean(SumAccumulator):
    """Batches whose value is NaN/inf are counted, not averaged, so one bad batch cannot hide the rest."""

    def _clean(self, values: list[float]) -> tuple[list[float], float]:
        if all(math.isfinite(v) for v in values):
            return values, 0.0
        return [0.0] * len(values), 1.0


class ActivationGradNorm(_FiniteMean):
    fields = ("token_norm_sum", "token_count", "frob_sum", "batches", "nonfinite")

    def update(self, grad: torch.Tensor, token_mask: torch.Tensor) -> None:
        s, n, sq, b = activation_grad_sums(grad, token_mask)
        (s, n, frob, b), bad = self._clean([s, n, math.sqrt(sq), b])
        self.add(s, n, frob, b, bad)

    def compute_from(self, t: dict[str, torch.Tensor]) -> dict:
        n, b = float(t["token_count"]), float(t["batches"])
        return {
            "activation_grad_norm": float(t["token_norm_sum"]) / n if n else math.nan,
            "activation_grad_frobenius": float(t["frob_sum"]) / b if b else math.nan,
            "activation_grad_nonfinite_batches": int(t["nonfinite"]),
        }


class ParamGradNorm(_FiniteMean):
    fields = ("norm_sum", "batches", "nonfinite")

    def update(self, params: Iterable[torch.nn.Parameter]) -> None:
        (v, b), bad = self._clean([param_grad_norm(params), 1.0])
        self.add(v, b, bad)

    def compute_from(self, t: dict[str, torch.Tensor]) -> dict:
        b = float(t["batches"])
        return {"param_grad_norm": float(t["norm_sum"]) / b if b else math.nan,
                "param_grad_nonfinite_batches": int(t["nonfinite"])}


class ActivationGradProbe(ProbePlugin):
    """‖∂L/∂h⁽ˡ⁾‖ from a tensor hook on each block's output (no tensors are retained)."""

    name = "activation_grad"

    def attach(self, ctx) -> None:
        self.layers = [ActivationGradNorm() for _ in ctx.blocks]
        for acc, block in zip(self.layers, ctx.blocks):
            def hook(module, args, output, acc=acc):
                h = first_tensor(output)
                if ctx.active and torch.is_grad_enabled() and h.requires_grad:
                    mask = ctx.attention_mask
                    h.register_hook(lambda g: acc.update(g, mask))
            self.handles.append(block.register_forward_hook(hook))


class ParamGradProbe(ProbePlugin):
    """‖∇θ L‖ per block, plus the embeddings and head groups, read after each backward."""

    name = "param_grad"

    def attach(self, ctx) -> None:
        self.groups = {name: ParamGradNorm() for name in ctx.groups}
        self.layers = [self.groups[f"block.{i}"] for i in range(ctx.num_layers)]

    def accumulators(self) -> list[SumAccumulator]:
        return list(self.groups.values())

    def after_backward(self, ctx) -> None:
        for name, acc in self.groups.items():
            acc.update(p for _, p in ctx.groups[name])

    def group_results(self, batches: list[int] | None = None) -> dict:
        return {f"param_grad_norm_{k}": self.groups[k].compute(batches)["param_grad_norm"] for k in ("embeddings", "head")}
