"""Exact gradient norms of embedding matrices without a dense vocabulary-sized gradient.

A token embedding's gradient is zero outside the rows the batch looked up, yet autograd builds it as
a dense V × D tensor; with tied embeddings it is worse: the LM head's dense gradient A (V × D) is made
first and held through the whole backward until the lookup's part S arrives and the two are summed.
For a 150k-token vocabulary that is several hundred MB per copy, more than the blocks' gradients.

While a measure-only probe is attached, ``SparseEmbeddingGrads`` (1) switches each trainable
``nn.Embedding`` to sparse gradients, and (2) gives a tied second owner of its weight (the LM head)
its own leaf sharing the same storage, so A arrives, is measured and dropped at once. The norm of the
true gradient A + S is then exact from A's squared norm and A's rows at the looked-up ids U:
‖A + S‖² = ‖A‖² + Σ_{i ∈ U} (‖A_i + S_i‖² − ‖A_i‖²). Forward values and every other gradient are
unchanged; everything is restored on ``close``.
"""
from __future__ import annotations

import torch
from torch import nn

from ..errors import ArchitectureError


def _owners(model: nn.Module, weight: torch.Tensor) -> list[tuple[nn.Module, str]]:
    return [(m, n) for m in model.modules() for n, p in m._parameters.items() if p is weight]


class _Tied:
    """One embedding weight: the ids it looked up this step and the pieces of its gradient."""

    def __init__(self, module: nn.Embedding) -> None:
        self.module, self.weight = module, module.weight
        self.ids: list[torch.Tensor] = []
        self.sq = torch.zeros((), dtype=torch.float64)  # ‖A‖² of dense pieces, + ‖S‖² if no A came
        self.rows: torch.Tensor | None = None  # A at the looked-up ids (float64)
        self.sparse: torch.Tensor | None = None  # S, coalesced

    def reset(self) -> None:
        self.ids.clear()
        self.sq, self.rows, self.sparse = torch.zeros((), dtype=torch.float64), None, None

    def unique_ids(self) -> torch.Tensor:
        return torch.unique(torch.cat([i.flatten() for i in self.ids])) if self.ids else torch.zeros(0, dtype=torch.long)

    def add_dense(self, g: torch.Tensor) -> None:
        if self.rows is not None:
            raise ArchitectureError("an embedding weight received two dense gradients; its norm cannot be combined")
        g = g.detach()
        self.sq = torch.linalg.vector_norm(g, dtype=torch.float64).pow(2).cpu()
        self.rows = g.index_select(0, self.unique_ids().to(g.device)).double()

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


class SparseEmbeddingGrads:
    """See the module docstring. ``pieces(p)`` says whether ``p``'s gradient is measured here;
    ``record(p)`` (from the post-accumulate hook) files it; ``norm(p)`` combines after backward."""

    def __init__(self, model: nn.Module) -> None:
        self.tied: dict[int, _Tied] = {}
        self.leaf_of: dict[int, _Tied] = {}  # id(leaf) -> the embedding it belongs to
        self.extra_leaves: list[nn.Parameter] = []
        self._restore: list = []
        self.handles: list = []
        for m in model.modules():
            if isinstance(m, nn.Embedding) and m.weight.requires_grad and type(m.weight.data) is torch.Tensor:
                self._take(model, m)

    def _take(self, model: nn.Module, module: nn.Embedding) -> None:
        others = [(o, n) for o, n in _owners(model, module.weight) if o is not module]
        if len(others) > 1 or any(not isinstance(o, nn.Linear) for o, _ in others):
            return  # tied in a way the two-piece formula does not cover: leave it dense
        entry = _Tied(module)
        self.tied[id(module.weight)] = entry
        self.leaf_of[id(module.weight)] = entry
        self._restore.append(lambda m=module, s=module.sparse: setattr(m, "sparse", s))
        module.sparse = True
        self.handles.append(module.register_forward_pre_hook(lambda m, args: entry.ids.append(args[0].detach())))
        for owner, name in others:
            leaf = nn.Parameter(module.weight.detach(), requires_grad=True)  # same storage, own leaf
            owner._parameters[name] = leaf
            self._restore.append(lambda o=owner, n=name, w=module.weight: o._parameters.__setitem__(n, w))
            self.leaf_of[id(leaf)] = entry
            self.extra_leaves.append(leaf)

    def owns(self, p: torch.Tensor) -> bool:
        return id(p) in self.leaf_of

    def record(self, p: torch.Tensor) -> None:
        entry = self.leaf_of[id(p)]
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
