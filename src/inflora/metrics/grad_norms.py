"""Gradient norms: where the backward signal shrinks (activations) and what each block receives (parameters)."""

from __future__ import annotations

import math
from typing import Iterable

import torch

from ..models.architectures import first_tensor
from .accumulate import ProbePlugin, SumAccumulator
from .embedding_grads import SparseEmbeddingGrads


def activation_grad_sums(grad: torch.Tensor, token_mask: torch.Tensor) -> tuple[float, float, float, float]:
    """For ∂L/∂h of one layer ([B, T, D]): (sum of per-token L2 norms over non-padding tokens, token count,
    squared Frobenius norm over non-padding tokens, 1 batch). Non-finite gradients give NaN sums."""
    g = grad.detach().float()
    m = token_mask.bool()
    per_token = g.norm(dim=-1)[m]
    sums = torch.stack([per_token.sum().double(), m.sum().double(), per_token.pow(2).sum().double()])
    s, n, sq = sums.tolist()  # one host sync for the three
    return s, n, sq, 1.0


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


def tensor_grad_norm(grad: torch.Tensor) -> tuple[torch.Tensor, object]:
    """(‖g‖ in float32 of this rank's part, process group its square must be summed over or None)."""
    g, group = _shard_of(grad.detach())
    return torch.linalg.vector_norm(g, dtype=torch.float32), group


def combine_norms(norms: list[tuple[torch.Tensor, object]]) -> float:
    """sqrt(Σ‖g‖²) from per-tensor (norm, group) pairs, in the given order: one host sync; the
    squared norms of sharded (FSDP2) tensors are summed across their mesh first (one all-reduce;
    every rank must call this). 0 for an empty list (a frozen group)."""
    local = [n for n, g in norms if g is None]
    sharded = [n for n, g in norms if g is not None]
    if not sharded:
        return float(torch.linalg.vector_norm(torch.stack(local))) if local else 0.0
    total = torch.stack(sharded).pow(2).sum()
    torch.distributed.all_reduce(total, group=next(g for _, g in norms if g is not None))
    if local:
        total = total + torch.stack(local).pow(2).sum().to(total.device)
    return float(total.sqrt())


def param_grad_norm(params: Iterable[torch.nn.Parameter]) -> float:
    """sqrt(Σ‖g‖²) over trainable parameters that received a gradient; 0 for a frozen group.
    Per-tensor norms are combined on the device: one host sync per group, no squared copies.
    FSDP2 gradients (sharded ``DTensor``s) count as the *full* gradient: the squared norms of this
    rank's shards are summed across the mesh (one all-reduce per group; every rank must call this)."""
    return combine_norms([tensor_grad_norm(p.grad) for p in params if p.requires_grad and p.grad is not None])


class _FiniteMean(SumAccumulator):
    """Batches whose value is NaN/inf are counted, not averaged, so one bad batch cannot hide the rest."""

    def _clean(self, values: list[float]) -> tuple[list[float], float]:
        if all(math.isfinite(v) for v in values):
            return values, 0.0
        return [0.0] * len(values), 1.0


class ActivationGradNorm(_FiniteMean):
    fields = ("token_norm_sum", "token_count", "frob_sum", "batches", "nonfinite")

    def update(self, grad: torch.Tensor, token_mask: torch.Tensor, step: int | None = None) -> None:
        """One block call's sums; calls of the same forward ``step`` share one batch record."""
        s, n, sq, b = activation_grad_sums(grad, token_mask)
        (s, n, frob, b), bad = self._clean([s, n, math.sqrt(sq), b])
        values = dict(token_norm_sum=s, token_count=n, frob_sum=frob, batches=b, nonfinite=bad)
        self.add(**values) if step is None else self.add_to_step(step, **values)

    @staticmethod
    def token_mean(t: dict[str, torch.Tensor]) -> torch.Tensor:
        """Mean per-token ‖∂L/∂h‖ from totals (``[...]``, NaN without tokens): for a result and for a
        whole bootstrap at once."""
        n = t["token_count"]
        return torch.where(n > 0, t["token_norm_sum"] / n, math.nan)

    def compute_from(self, t: dict[str, torch.Tensor]) -> dict:
        b = float(t["batches"])
        return {
            "activation_grad_norm": float(self.token_mean(t)),
            "activation_grad_frobenius": float(t["frob_sum"]) / b if b else math.nan,
            "activation_grad_nonfinite_batches": int(t["nonfinite"]),
        }


class ParamGradNorm(_FiniteMean):
    fields = ("norm_sum", "batches", "nonfinite")

    def update(self, params: Iterable[torch.nn.Parameter]) -> None:
        self.update_norm(param_grad_norm(params))

    def update_norm(self, norm: float) -> None:
        (v, b), bad = self._clean([norm, 1.0])
        self.add(norm_sum=v, batches=b, nonfinite=bad)

    def compute_from(self, t: dict[str, torch.Tensor]) -> dict:
        b = float(t["batches"])
        return {
            "param_grad_norm": float(t["norm_sum"]) / b if b else math.nan,
            "param_grad_nonfinite_batches": int(t["nonfinite"]),
        }


class ActivationGradProbe(ProbePlugin):
    """‖∂L/∂h⁽ˡ⁾‖ from a tensor hook on each block's output (no tensors are retained)."""

    name = "activation_grad"

    def attach(self, ctx) -> None:
        self.layers = [ActivationGradNorm() for _ in ctx.blocks]
        for acc, block in zip(self.layers, ctx.blocks):

            def hook(module, args, output, acc=acc):
                h = first_tensor(output)
                if ctx.active and torch.is_grad_enabled() and h.requires_grad:
                    mask, step = ctx.attention_mask, ctx.forwards
                    h.register_hook(lambda g: acc.update(g, mask, step))

            self.handles.append(block.register_forward_hook(hook))

    def resampled_profile(self, draws: torch.Tensor) -> torch.Tensor:
        """Each layer's mean per-token norm on every bootstrap resample at once: ``[R, layers]``."""
        return torch.stack([acc.token_mean(acc.resampled_totals(draws)) for acc in self.layers], 1)


class ParamGradProbe(ProbePlugin):
    """‖∇θ L‖ per block, plus the embeddings and head groups, measured as each gradient is produced.

    A post-accumulate-grad hook on every trainable parameter takes the gradient's norm the moment
    backward completes it; when the context is ``measure_only`` (``probe_step``: the gradient
    exists only to be measured) the hook also drops it (``p.grad = None``), so at most the
    gradients autograd is still producing are alive, never a whole model's. ``after_backward``
    combines the norms per group in parameter order (the numbers ``param_grad_norm`` gives on
    kept gradients). Gradients the hook did not see are read from ``.grad`` as before: FSDP2
    assigns its reduce-scattered shards outside autograd, and they need the mesh-wide sum.
    ``sparse_embeddings=True`` (``diagnose``) also keeps vocabulary-sized embedding gradients from
    ever being dense (``embedding_grads``); not for a loop whose optimizer needs those gradients."""

    name = "param_grad"

    def __init__(self, sparse_embeddings: bool = False) -> None:
        super().__init__()
        self.sparse_embeddings = sparse_embeddings
        self.embeddings: SparseEmbeddingGrads | None = None

    def attach(self, ctx) -> None:
        self.groups = {name: ParamGradNorm() for name in ctx.groups}
        self.layers = [self.groups[f"block.{i}"] for i in range(ctx.num_layers)]
        self.seen: dict[int, torch.Tensor] = {}  # id(param) -> ‖g‖ (float32) of this backward
        if self.sparse_embeddings:
            self.embeddings = SparseEmbeddingGrads(ctx.inner)
        for p in (p for params in ctx.groups.values() for _, p in params if p.requires_grad):
            self.handles.append(p.register_post_accumulate_grad_hook(self._hook(ctx)))

    def _hook(self, ctx):
        def measure(p: torch.nn.Parameter) -> None:
            if not ctx.active or p.grad is None:
                return
            if self.embeddings is not None and self.embeddings.owns(p):
                self.embeddings.record(p)
            else:
                norm, group = tensor_grad_norm(p.grad)
                if group is not None:  # a shard: left for after_backward's mesh-wide sum
                    return
                self.seen[id(p)] = norm
            if ctx.measure_only:
                p.grad = None

        return measure

    def detach(self) -> None:
        if self.embeddings is not None:
            self.embeddings.close()
            self.embeddings = None
        super().detach()

    def accumulators(self) -> list[SumAccumulator]:
        return list(self.groups.values())

    def after_backward(self, ctx) -> None:
        for name, acc in self.groups.items():
            acc.update_norm(combine_norms(self._norms(ctx.groups[name])))
        self.seen.clear()
        if self.embeddings is not None:
            self.embeddings.reset()

    def _norms(self, params) -> list[tuple[torch.Tensor, object]]:
        out = []
        for _, p in params:
            norm = self.embeddings.norm(p) if self.embeddings is not None else None
            if norm is not None:
                out.append((norm, None))
            elif id(p) in self.seen:
                out.append((self.seen[id(p)], None))
            elif p.requires_grad and p.grad is not None:
                out.append(tensor_grad_norm(p.grad))
        return out

    def group_results(self, batches: list[int] | None = None) -> dict:
        return {
            f"param_grad_norm_{k}": self.groups[k].compute(batches)["param_grad_norm"] for k in ("embeddings", "head")
        }
