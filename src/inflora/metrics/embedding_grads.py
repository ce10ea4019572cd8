"""Exact gradient norms of embedding matrices without a dense vocabulary-sized gradient.

A token embedding's gradient is zero outside the rows the batch looked up, yet autograd builds it as
a dense V × D tensor; with tied embeddings it is worse: the LM head's dense gradient A (V × D) is made
first and held through the whole backward until the lookup's part S arrives and the two are summed.
For a 150k-token vocabulary that is several hundred MB per copy, more than the blocks' gradients.

While a measure-only probe is attached, ``SparseEmbeddingGrads`` (1) switches each trainable
``nn.Embedding`` to sparse gradients, and (2) runs the LM head (tied or not) through ``_HeadGrad``,
whose backward returns ∂L/∂h as usual but reduces the head's weight gradient A = dzᵀh chunk by chunk
to its squared norm and its rows at the looked-up ids U, so A never exists whole. The norm of the
true gradient A + S is then exact:
‖A + S‖² = ‖A‖² + Σ_{i ∈ U} (‖A_i + S_i‖² − ‖A_i‖²). Forward values and every other gradient are
unchanged; everything is restored on ``close``.
"""

from __future__ import annotations

import types

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ArchitectureError

HEAD_CHUNK = 2048  # vocabulary rows of the head's weight gradient alive at once (8192 held ~140 MiB more at
# a 152k vocabulary and T = 512: the chunk, its fp64 copy for the norm and a copy of dz's columns)


def _owners(model: nn.Module, weight: torch.Tensor) -> list[tuple[nn.Module, str]]:
    return [(m, n) for m in model.modules() for n, p in m._parameters.items() if p is weight]


def _output_head(model: nn.Module) -> nn.Module | None:
    return model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None


class _Tied:
    """One embedding weight: the ids it looked up this step and the pieces of its gradient."""

    def __init__(self, weight: torch.Tensor) -> None:
        self.weight = weight
        self.ids: list[torch.Tensor] = []
        self.sq = torch.zeros((), dtype=torch.float64)  # ‖A‖² of dense pieces, + ‖S‖² if no A came
        self.rows: torch.Tensor | None = None  # A at the looked-up ids (float64)
        self.sparse: torch.Tensor | None = None  # S, coalesced

    def reset(self) -> None:
        self.ids.clear()
        self.sq, self.rows, self.sparse = torch.zeros((), dtype=torch.float64), None, None

    def unique_ids(self) -> torch.Tensor:
        return (
            torch.unique(torch.cat([i.flatten() for i in self.ids])) if self.ids else torch.zeros(0, dtype=torch.long)
        )

    def add_dense(self, g: torch.Tensor) -> None:
        if self.rows is not None:
            raise ArchitectureError("an embedding weight received two dense gradients; its norm cannot be combined")
        g = g.detach()
        self.sq = torch.linalg.vector_norm(g, dtype=torch.float64).pow(2).cpu()
        self.rows = g.index_select(0, self.unique_ids().to(g.device)).double()

    def add_head(self, dz: torch.Tensor, h: torch.Tensor) -> None:
        """The head's part A = dzᵀ h of the gradient, ``HEAD_CHUNK`` rows at a time: its squared
        norm and its rows at the looked-up ids, never the whole V × D matrix."""
        if self.rows is not None:
            raise ArchitectureError("an embedding weight received two dense gradients; its norm cannot be combined")
        dz, h = dz.reshape(-1, dz.shape[-1]), h.reshape(-1, h.shape[-1]).float()
        u = self.unique_ids().to(dz.device)
        sq, rows = torch.zeros((), dtype=torch.float64, device=dz.device), []
        for v0 in range(0, dz.shape[1], HEAD_CHUNK):
            a = dz[:, v0 : v0 + HEAD_CHUNK].float().t() @ h
            sq += torch.linalg.vector_norm(a, dtype=torch.float64).pow(2)
            mine = u[(u >= v0) & (u < v0 + a.shape[0])]
            rows.append(a.index_select(0, mine - v0).double())
        self.sq = sq.cpu()
        self.rows = torch.cat(rows) if rows else torch.zeros(0, h.shape[1], dtype=torch.float64)

    def add_sparse(self, g: torch.Tensor) -> None:
        self.sparse = g.detach().coalesce()

    def norm(self) -> torch.Tensor | None:
        """‖A + S‖ (float32 on the weight's device), or None when no gradient came this step."""
        if self.sparse is None and self.rows is None:
            return None
        total = self.sq.to(self.weight.device)
        if self.sparse is not None:
            idx, vals = self.sparse.indices()[0], self.sparse.values().double()
            if self.rows is None:
                total = total + vals.pow(2).sum()
            else:
                u = self.unique_ids().to(idx.device)
                a = self.rows[torch.searchsorted(u, idx)]
                total = total + (a + vals).pow(2).sum() - a.pow(2).sum()
        return total.sqrt().float()


class _HeadGrad(torch.autograd.Function):
    """``F.linear(h, W)`` whose backward gives ∂L/∂h as usual but hands the weight's gradient to
    the entry as norms and rows (``_Tied.add_head``) instead of materialising it."""

    @staticmethod
    def forward(ctx, h, weight, entry):
        ctx.save_for_backward(h, weight)
        ctx.entry = entry
        return F.linear(h, weight)

    @staticmethod
    def backward(ctx, dz):
        h, weight = ctx.saved_tensors
        ctx.entry.add_head(dz, h)
        return dz @ weight.to(dz.dtype), None, None


class SparseEmbeddingGrads:
    """See the module docstring. ``owns(p)``: ``p``'s gradient is measured here; ``record(p)``
    (from the post-accumulate hook) files a sparse piece; ``norm(p)`` combines after backward."""

    def __init__(self, model: nn.Module) -> None:
        self.tied: dict[int, _Tied] = {}
        self._restore: list = []
        self.handles: list = []
        for m in model.modules():
            if (
                isinstance(m, nn.Embedding)
                and m.weight.requires_grad
                and type(m.weight.data) is torch.Tensor
                and type(m).forward is nn.Embedding.forward
            ):  # a subclass (BART's learned positions, called
                self._take_embedding(model, m)  # with a shape, not ids) stays dense
        head = _output_head(model)
        if (
            isinstance(head, nn.Linear)
            and head.bias is None
            and head.weight.requires_grad
            and type(head.weight.data) is torch.Tensor
            and len(_owners(model, head.weight)) == 1 + (id(head.weight) in self.tied)
        ):
            self._take_head(head)

    def _take_embedding(self, model: nn.Module, module: nn.Embedding) -> None:
        others = [o for o, _ in _owners(model, module.weight) if o is not module]
        if others and (len(others) > 1 or _output_head(model) is not others[0]):
            return  # tied in a way the two-piece formula does not cover: leave it dense
        entry = self.tied[id(module.weight)] = _Tied(module.weight)
        self._restore.append(lambda m=module, s=module.sparse: setattr(m, "sparse", s))
        module.sparse = True
        self.handles.append(module.register_forward_pre_hook(lambda m, args: entry.ids.append(args[0].detach())))

    def _take_head(self, head: nn.Linear) -> None:
        entry = self.tied.setdefault(id(head.weight), _Tied(head.weight))

        def forward(self_, h):
            return _HeadGrad.apply(h, self_.weight, entry) if torch.is_grad_enabled() else F.linear(h, self_.weight)

        head.forward = types.MethodType(forward, head)
        self._restore.append(lambda: head.__dict__.pop("forward", None))

    def owns(self, p: torch.Tensor) -> bool:
        return id(p) in self.tied

    def record(self, p: torch.Tensor) -> None:
        entry = self.tied[id(p)]
        (entry.add_sparse if p.grad.is_sparse else entry.add_dense)(p.grad)

    def norm(self, p: torch.Tensor) -> torch.Tensor | None:
        return self.tied[id(p)].norm() if id(p) in self.tied else None

    def reset(self) -> None:
        for entry in self.tied.values():
            entry.reset()

    def close(self) -> None:
        for h in self.handles:
            h.remove()
        for undo in reversed(self._restore):
            undo()
        self.handles.clear()
        self._restore.clear()
