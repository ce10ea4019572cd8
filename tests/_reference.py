"""Slow reference implementations of the diagnostics: explicit Python loops over examples, heads,
queries and keys, written from the definitions in design/method.md §2, independent of inflora's code."""

from __future__ import annotations

import math

import numpy as np
import torch


def entropy_reference(attn: torch.Tensor, mask: torch.Tensor, causal: bool = False) -> dict[str, list[float]]:
    """Per-head mean of -Σ_s a log a over non-padding keys s (s <= t when causal), averaged over the
    non-padding queries t of every example; the normalised form divides each query's entropy by
    log(#valid keys) and skips queries with a single valid key."""
    a = attn.detach().double().tolist()
    m = mask.tolist()
    n_b, n_h, n_t = len(a), len(a[0]), len(a[0][0])
    raw = [[] for _ in range(n_h)]
    norm = [[] for _ in range(n_h)]
    for b in range(n_b):
        for h in range(n_h):
            for t in range(n_t):
                if not m[b][t]:
                    continue
                keys = [s for s in range(n_t) if m[b][s] and (not causal or s <= t)]
                e = 0.0
                for s in keys:
                    p = a[b][h][t][s]
                    if p > 0:
                        e -= p * math.log(p)
                raw[h].append(e)
                if len(keys) > 1:
                    norm[h].append(e / math.log(len(keys)))
    head = [sum(v) / len(v) for v in raw]
    head_norm = [sum(v) / len(v) for v in norm]
    return {"head": head, "head_norm": head_norm, "mean": sum(head) / n_h, "mean_norm": sum(head_norm) / n_h}


def activation_grad_reference(grad: torch.Tensor, mask: torch.Tensor) -> dict[str, float]:
    """Mean over non-padding tokens of the per-token L2 norm, and the Frobenius norm over those tokens."""
    g = grad.detach().double().tolist()
    m = mask.tolist()
    norms, sq = [], 0.0
    for b in range(len(g)):
        for t in range(len(g[b])):
            if m[b][t]:
                s = sum(x * x for x in g[b][t])
                norms.append(math.sqrt(s))
                sq += s
    return {"per_token": sum(norms) / len(norms), "frobenius": math.sqrt(sq)}


def param_grad_reference(params) -> float:
    total = 0.0
    for p in params:
        if p.requires_grad and p.grad is not None:
            for x in p.grad.detach().double().flatten().tolist():
                total += x * x
    return math.sqrt(total)


def cka_reference(x, y) -> float:
    """Linear CKA through Gram matrices and HSIC (Kornblith et al. 2019, eq. 4 with linear kernels):
    HSIC(K, L) = tr(K H L H); CKA = HSIC(K, L) / sqrt(HSIC(K, K) HSIC(L, L))."""
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    n = x.shape[0]
    k, l = x @ x.T, y @ y.T
    h = np.eye(n) - np.ones((n, n)) / n

    def hsic(a, b):
        return float(np.trace(a @ h @ b @ h))

    return hsic(k, l) / math.sqrt(hsic(k, k) * hsic(l, l))


def mean_pool_reference(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    out = torch.zeros(hidden.shape[0], hidden.shape[2], dtype=torch.float64)
    for b in range(hidden.shape[0]):
        n = 0
        for t in range(hidden.shape[1]):
            if mask[b, t]:
                out[b] += hidden[b, t].double()
                n += 1
        out[b] /= max(n, 1)
    return out


def random_attention(
    b: int, h: int, t: int, mask: torch.Tensor, causal: bool = False, seed: int = 0, sharp: float = 3.0
) -> torch.Tensor:
    """Softmax maps with padded (and future, if causal) keys masked out, some rows near one-hot."""
    g = torch.Generator().manual_seed(seed)
    scores = torch.randn(b, h, t, t, generator=g, dtype=torch.float64) * sharp
    valid = mask.bool()[:, None, None, :].expand(b, h, t, t)
    if causal:
        valid = valid & torch.ones(t, t, dtype=torch.bool).tril()
    scores = scores.masked_fill(~valid, float("-inf"))
    attn = torch.softmax(scores, -1)
    return torch.nan_to_num(attn, nan=0.0).float()  # rows with no valid key (padded queries): zeros
