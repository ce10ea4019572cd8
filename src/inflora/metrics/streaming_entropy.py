"""Attention entropy without attention maps: entropy sums computed beside the model's own SDPA.

Eager attention materialises every layer's [B, H, T, T] map and keeps it for the backward pass, so
a probe that reads maps costs O(T²) memory per layer. ``streaming_entropy_sums`` instead recomputes
the scores from the query and key the attention function receives (after rotary embeddings), one
chunk of queries at a time under ``no_grad``, and reduces each row to its entropy with a
log-sum-exp: H = log Σ exp(t) − Σ softmax(t)·t with t = s − max(s), over the keys the mask lets
through. Nothing larger than ``B × H × chunk × T`` scores exists at once and nothing is kept for
backward. Keys that no row of a chunk can see (the causal future, outside a sliding window) are
skipped. The block output itself comes from transformers' ``sdpa_attention_forward`` unchanged.

``--entropy-queries N`` draws N valid query positions per sequence (uniformly, seeded, without
replacement) and returns Horvitz-Thompson totals: unbiased for the same mean, with a variance
estimate (simple random sampling without replacement within each sequence) for its standard error.
"""

from __future__ import annotations

import math

import torch

from ..errors import ArchitectureError
from .fused_entropy import fused_row_entropy

CHUNK = 64  # queries per chunk: 64 beat 256 by ~2x on CPU (fewer cache misses), see the prototype
_FILL = -1e30  # a finite "minus infinity": exp() underflows to 0 and 0 × _FILL stays 0 (no NaN)

SUM_FIELDS = ("raw_sum", "raw_count", "norm_sum", "norm_count", "raw_var", "mean_var", "norm_mean_var", "sampled")


def key_validity(mask: torch.Tensor | None, batch: int, heads: int, q_len: int, k_len: int) -> torch.Tensor | None:
    """The mask SDPA receives as booleans ``[B|1, H|1, Tq, Tk]`` (True: the key takes part).

    Boolean masks are SDPA's own convention. A float mask is additive: -inf (or the dtype's minimum)
    removes a key; any other value keeps it, and a value other than 0 is a bias on its score
    (``additive_bias``), taken into the entropy by the chunked path."""
    if mask is None:
        return None
    if not torch.is_tensor(mask):
        raise ArchitectureError(
            f"streaming entropy cannot interpret an attention mask of type {type(mask).__name__}; use attention='eager'"
        )
    shape = tuple(mask.shape)
    if mask.dim() != 4 or shape[0] not in (1, batch) or shape[1] not in (1, heads) or shape[2:] != (q_len, k_len):
        raise ArchitectureError(
            f"streaming entropy cannot interpret an attention mask of shape {shape} for "
            f"{batch} sequences × {heads} heads × {q_len} queries × {k_len} keys; use attention='eager'"
        )
    if mask.dtype == torch.bool:
        return mask
    if not mask.is_floating_point():
        raise ArchitectureError(
            f"streaming entropy cannot interpret an attention mask of dtype {mask.dtype}; use attention='eager'"
        )
    return ~(mask <= torch.finfo(mask.dtype).min / 2)


def additive_bias(mask: torch.Tensor | None) -> torch.Tensor | None:
    """The scores' additive bias where the mask carries one (Doge's dynamic mask: values other than
    0 and -inf that SDPA adds to the scores), float32 with -inf at removed keys; None for a boolean
    or a plain 0 / -inf mask. The entropy is then that of softmax(scale·qkᵀ + bias), the
    distribution the model uses."""
    if mask is None or not torch.is_tensor(mask) or not mask.is_floating_point():
        return None
    removed = mask <= torch.finfo(mask.dtype).min / 2
    if bool(((mask == 0) | removed).all()):
        return None
    return mask.float().masked_fill(removed, float("-inf"))


def sample_positions(query_mask: torch.Tensor, queries: int | None, generator: torch.Generator | None):
    """Query positions to measure, ``[B, n]`` ascending, with ``taken`` ``[B, n]`` marking real draws.

    ``queries=None``: every position (``taken`` = the query mask). Otherwise up to ``queries``
    positions per sequence drawn uniformly without replacement from its valid (non-padding) ones."""
    b, t = query_mask.shape
    device = query_mask.device
    if queries is None or queries >= t:
        return torch.arange(t, device=device).expand(b, t), query_mask
    keys = torch.rand(b, t, generator=generator, device=generator.device if generator else "cpu").to(device)
    keys = keys.masked_fill(~query_mask, 2.0)  # padding sorts last
    order = keys.argsort(dim=1)[:, :queries]
    taken = torch.arange(queries, device=device)[None] < query_mask.sum(1, keepdim=True)
    positions = torch.where(taken, order, torch.full_like(order, t))  # invalid draws sort last
    positions, idx = positions.sort(dim=1)
    return positions.clamp_max(t - 1), taken.gather(1, idx)


def valid_key_counts(valid: torch.Tensor | None, causal: bool, batch: int, q_len: int, k_len: int) -> torch.Tensor:
    """Keys each query may attend to, ``[B, H|1, Tq]``."""
    if valid is not None:
        return valid.sum(-1).expand(batch, -1, -1)
    if causal:
        return (torch.arange(q_len) + 1).clamp_max(k_len).expand(batch, 1, q_len)
    return torch.full((batch, 1, q_len), k_len)


def _rows(x: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
    """``x[b, h, pos[b, j]]`` for x of shape [B|1, H, T, ...] (broadcast batch expanded)."""
    b = pos.shape[0]
    x = x.expand(b, *x.shape[1:])
    idx = pos[:, None, :].expand(b, x.shape[1], -1)
    for _ in x.shape[3:]:
        idx = idx.unsqueeze(-1)
    return x.gather(2, idx.expand(*idx.shape[:3], *x.shape[3:]))


def _key_range(rows: torch.Tensor | None, pos: torch.Tensor, causal: bool, k_len: int) -> tuple[int, int]:
    """The smallest key window [lo, hi) holding every key some row of the chunk can see."""
    if rows is not None:
        seen = rows.flatten(0, 2).any(0).nonzero()
        return (int(seen[0]), int(seen[-1]) + 1) if len(seen) else (0, 0)
    if causal:
        return 0, min(int(pos.max()) + 1, k_len)
    return 0, k_len


def chunk_entropy(query, key, rows, pos, *, scaling: float, causal: bool, bias=None) -> torch.Tensor:
    """Entropy (nats) of the softmax rows of one query chunk, ``[B, H, c]``, in float32.

    ``query`` [B, H, c, D] are the chunk's queries, ``key`` [B, Hkv, S, D] all keys, ``rows`` the
    chunk's mask rows [B, H|1, c, S] (or None), ``pos`` [B, c] the query positions (for causal)."""
    b, h, c, d = query.shape
    hkv = key.shape[1]
    lo, hi = _key_range(rows, pos, causal, key.shape[2])
    if hi <= lo:
        return torch.zeros(b, h, c, device=query.device)
    q = query.float().reshape(b, hkv, h // hkv, c, d)
    k = key[:, :, lo:hi].float()
    s = torch.matmul(q, k[:, :, None].transpose(-1, -2)).mul_(scaling)  # [B, Hkv, g, c, S']
    if bias is not None:  # the chunk's rows of the additive bias [B|1, H|1, c, S]
        part = bias[..., lo:hi].expand(b, h, c, hi - lo).reshape(b, hkv, h // hkv, c, hi - lo)
        s = s + part.nan_to_num(neginf=_FILL)
    if rows is not None:
        blocked = ~rows[..., lo:hi]
        s.masked_fill_(blocked.reshape(b, -1, h // hkv if blocked.shape[1] > 1 else 1, c, hi - lo), _FILL)
    elif causal:
        cut = int(pos.min()) + 1 - lo  # keys at or before the chunk's first query are seen by every row
        if cut < hi - lo:
            tail = s[..., cut:]
            future = torch.arange(lo + cut, hi, device=s.device)[None, None, None] > pos[:, None, :, None]
            tail.masked_fill_(future[:, None], _FILL)
    s.sub_(s.amax(-1, keepdim=True))
    e = torch.exp(s)
    z = e.sum(-1)
    ent = z.log() - e.mul_(s).sum(-1) / z
    return ent.reshape(b, h, c)


def streaming_entropy_sums(
    query: torch.Tensor,
    key: torch.Tensor,
    attention_mask: torch.Tensor | None,
    query_mask: torch.Tensor,
    *,
    scaling: float | None = None,
    causal: bool = False,
    chunk: int = CHUNK,
    queries: int | None = None,
    generator: torch.Generator | None = None,
    fused: bool = True,
) -> tuple[torch.Tensor, ...]:
    """Per-head entropy sums of one attention layer, the same as ``attention_entropy_sums`` computes
    from the eager map, but from ``query`` [B, H, T, D] and ``key`` [B, Hkv, S, D]: from one fused
    kernel call (``fused_entropy``) where the platform has one and ``fused``, else in query chunks.

    ``attention_mask`` is what the model hands its attention function (None, bool or additive 4-D);
    ``causal`` applies when it is None (SDPA's ``is_causal``). ``query_mask`` [B, T] marks the queries
    averaged over (non-padding). Returns the tensors named in ``SUM_FIELDS`` (float64): per-head raw
    and normalised sums with their query counts, and for ``queries=N`` the variance estimates of the
    per-head and head-averaged totals and the number of sampled queries (all zero when exact)."""
    b, h, t, d = query.shape
    hkv, s_len = key.shape[1], key.shape[2]
    if h % hkv:
        raise ArchitectureError(
            f"{h} query heads cannot share {hkv} key/value heads (grouped-query attention needs a divisor)"
        )
    if tuple(query_mask.shape) != (b, t):
        raise ArchitectureError(
            f"the padding mask has shape {tuple(query_mask.shape)}, the attention has {b} × {t} queries"
        )
    with torch.no_grad():
        scaling = d**-0.5 if scaling is None else float(scaling)
        valid = key_validity(attention_mask, b, h, t, s_len)
        bias = additive_bias(attention_mask)
        query_mask = query_mask.bool().to(query.device)
        n_keys = valid_key_counts(valid, causal, b, t, s_len).to(query.device)  # [B, H|1, T]
        normable = query_mask[:, None] & (n_keys > 1)
        sampling = queries is not None and queries < t
        pos, taken = sample_positions(query_mask, queries if sampling else None, generator)
        take = (lambda x: _rows(x, pos)) if sampling else (lambda x: x)  # noqa: E731
        ent = None
        if fused and bias is None:  # H = L − scale·⟨q, O'⟩ holds without a bias only
            ent = _fused(query, key, valid, pos, take, sampling=sampling, causal=causal, scaling=scaling)
        if ent is None:
            ent = _chunked(
                query, key, valid, pos, taken, sampling=sampling, causal=causal, scaling=scaling, chunk=chunk, bias=bias
            )
        ent = ent.double()
        norm_ok = take(normable[..., None])[..., 0].expand(b, h, -1)
        log_n = take(n_keys.clamp_min(2).double().log()[..., None])[..., 0]
        norm = torch.where(norm_ok, ent / log_n, 0.0)
        moments = _Moments(b, h, query.device)
        moments.add(ent, norm, taken)
        n_valid = query_mask.sum(1).double()
        return moments.totals(n_valid, normable.sum(-1).double().expand(b, h).sum(0), sampled=sampling)


def _fused(query, key, valid, pos, take, *, sampling: bool, causal: bool, scaling: float):
    """Row entropies ``[B, H, n]`` of the measured queries from one fused kernel call, or None.
    Sampled causal queries are not contiguous, so their causal rule becomes an explicit mask."""
    if not sampling:
        return fused_row_entropy(query, key, valid, scaling=scaling, causal=causal)
    rows = None if valid is None else take(valid)
    if rows is None and causal:
        rows = torch.arange(key.shape[2], device=pos.device)[None, None, None] <= pos[:, None, :, None]
    return fused_row_entropy(take(query), key, rows, scaling=scaling, causal=False)


def _chunked(query, key, valid, pos, taken, *, sampling: bool, causal: bool, scaling: float, chunk: int, bias=None):
    """Row entropies ``[B, H, n]`` of the measured queries, ``chunk`` queries at a time (0 for
    chunks holding no measured query: they are not computed)."""
    b, h = query.shape[:2]
    parts = []
    for i0 in range(0, pos.shape[1], chunk):
        p, took = pos[:, i0 : i0 + chunk], taken[:, i0 : i0 + chunk]
        if not bool(took.any()):
            parts.append(torch.zeros(b, h, p.shape[1], device=query.device))
            continue
        # exact: the chunk is the same contiguous positions in every sequence, a slice; sampled: a gather
        take = (
            (lambda x, i0=i0: x[:, :, i0 : i0 + chunk])
            if not sampling  # noqa: E731
            else (lambda x, p=p: _rows(x, p))
        )
        rows = None if valid is None else take(valid)
        parts.append(
            chunk_entropy(
                take(query), key, rows, p, scaling=scaling, causal=causal, bias=None if bias is None else take(bias)
            )
        )
    return torch.cat(parts, dim=-1)


class _Moments:
    """Per-sequence sums of sampled values and their squares, turned into Horvitz-Thompson totals."""

    def __init__(self, b: int, h: int, device) -> None:
        z = lambda *shape: torch.zeros(*shape, dtype=torch.float64, device=device)  # noqa: E731
        self.n = z(b)
        self.raw, self.raw2, self.norm = z(b, h), z(b, h), z(b, h)
        self.mean, self.mean2, self.nmean, self.nmean2 = z(b), z(b), z(b), z(b)

    def add(self, ent: torch.Tensor, norm: torch.Tensor, took: torch.Tensor) -> None:
        ent = torch.where(took[:, None], ent, 0.0)  # rows not taken (padding, no draw) count as nothing
        norm = torch.where(took[:, None], norm, 0.0)
        self.n += took.sum(1)
        self.raw += ent.sum(-1)
        self.raw2 += ent.pow(2).sum(-1)
        self.norm += norm.sum(-1)
        hm, nm = ent.mean(1), norm.mean(1)  # per query, averaged over heads
        self.mean += hm.sum(-1)
        self.mean2 += hm.pow(2).sum(-1)
        self.nmean += nm.sum(-1)
        self.nmean2 += nm.pow(2).sum(-1)

    def _variance(self, s1, s2, n_valid):
        """Var of the HT total N/n Σ x under sampling without replacement: N²(1 − n/N) s²/n."""
        n = self.n.reshape(-1, *([1] * (s1.dim() - 1)))
        big_n = n_valid.reshape(n.shape)
        s2_sample = (s2 - s1.pow(2) / n.clamp_min(1)) / (n - 1).clamp_min(1)
        var = big_n.pow(2) * (1 - n / big_n.clamp_min(1)) * s2_sample / n.clamp_min(1)
        return torch.where(n > 1, var.clamp_min(0), 0.0).sum(0)

    def totals(self, n_valid: torch.Tensor, norm_count: torch.Tensor, sampled: bool) -> tuple[torch.Tensor, ...]:
        scale = (n_valid / self.n.clamp_min(1))[:, None]  # N_b / n_b (1 when exact)
        h = self.raw.shape[1]
        count = n_valid.sum().expand(h).clone()
        raw_var = self._variance(self.raw, self.raw2, n_valid)
        mean_var = self._variance(self.mean, self.mean2, n_valid).reshape(1)
        norm_var = self._variance(self.nmean, self.nmean2, n_valid).reshape(1)
        n_sampled = self.n.sum().reshape(1) if sampled else torch.zeros(1, dtype=torch.float64)
        return (
            (self.raw * scale).sum(0),
            count,
            (self.norm * scale).sum(0),
            norm_count,
            raw_var,
            mean_var,
            norm_var,
            n_sampled,
        )


def standard_error(var_sum: float, count: float) -> float:
    """SE of a mean whose total has variance ``var_sum`` over ``count`` queries."""
    return math.sqrt(max(var_sum, 0.0)) / count if count else math.nan
