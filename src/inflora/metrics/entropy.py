"""Attention entropy: a saturation proxy (a near one-hot row has a near-zero softmax Jacobian).

Two ways in, one accumulator: ``attention_entropy_sums`` reads an eager attention map (the slow
reference, and the path for families outside transformers' attention interface), and
``streaming_entropy_sums`` (``streaming_entropy.py``) streams the same sums beside SDPA.
"""

from __future__ import annotations

import math

import torch

from ..errors import ArchitectureError, ConfigError
from ..models.architectures import attention_window
from ..models.attention import SINKS
from .accumulate import ProbePlugin, SumAccumulator
from .streaming_entropy import SUM_FIELDS, standard_error, streaming_entropy_sums


def valid_key_mask(attention_mask: torch.Tensor, causal: bool, window: int | None = None) -> torch.Tensor:
    """[B, Tq, Tk] booleans: key s is a real token (and s <= t for causal models, and |t - s| < window
    under a sliding window: behind the query for causal models, on both sides for encoders)."""
    keys = attention_mask.bool()[:, None, :]
    t = attention_mask.shape[1]
    valid = keys.expand(-1, t, -1)
    if causal:
        valid = valid & torch.ones(t, t, dtype=torch.bool, device=keys.device).tril()[None]
    if window is not None and window < t:
        valid = valid & torch.ones(t, t, dtype=torch.bool, device=keys.device).triu(1 - window)[None]
        if not causal:  # a bidirectional local window (ModernBERT): |t - s| < window on both sides
            valid = valid & torch.ones(t, t, dtype=torch.bool, device=keys.device).tril(window - 1)[None]
    return valid


def attention_entropy_sums(
    attn: torch.Tensor,
    attention_mask: torch.Tensor,
    causal: bool = False,
    window: int | None = None,
    sink: bool = False,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-head sums over non-padding queries of -Σ_s a log a (natural log), and of the same divided
    by log(#valid keys); with the query counts each sum is over. Returns four [H] tensors:
    (raw_sum, raw_count, norm_sum, norm_count). Queries with one valid key have no normalised form.

    ``sink``: the model's softmax has one more outcome than the map shows (gpt-oss's learned sink
    logit; its eager map drops that column), so each row's missing mass 1 − Σa is that outcome's
    probability: it joins the entropy and the outcome count, giving the distribution the model uses."""
    a = attn.detach().float()
    keys = valid_key_mask(attention_mask, causal, window)  # [B, T, T]
    a = a * keys[:, None]  # masked keys hold ~0 mass already; make it exact
    ent = -torch.special.xlogy(a, a).sum(-1)  # [B, H, T]; xlogy(0, 0) = 0, one pass over the map
    if sink:
        rest = (1 - a.sum(-1)).clamp_min(0)
        ent = ent - torch.special.xlogy(rest, rest)
    queries = attention_mask.bool()  # [B, T]
    n_keys = keys.sum(-1).float() + (1 if sink else 0)  # [B, T]
    normable = queries & (n_keys > 1)
    log_n = torch.where(normable, n_keys.clamp_min(2).log(), torch.ones_like(n_keys))
    q = queries[:, None].float()
    qn = normable[:, None].float()
    raw_sum = (ent * q).sum((0, 2))
    norm_sum = (ent / log_n[:, None] * qn).sum((0, 2))
    h = attn.shape[1]
    return raw_sum, q.sum().expand(h).clone(), norm_sum, qn.sum().expand(h).clone()


def attention_entropy(
    attn: torch.Tensor, attention_mask: torch.Tensor, causal: bool = False
) -> dict[str, torch.Tensor]:
    """Mean entropy per head ([H]) over non-padding queries and examples, raw and normalised."""
    raw, n, norm, nn_ = attention_entropy_sums(attn, attention_mask, causal)
    return {"head_entropy": raw / n.clamp_min(1), "head_entropy_norm": norm / nn_.clamp_min(1)}


class AttentionEntropy(SumAccumulator):
    """Streams per-head entropy sums of one layer over batches (from maps or from the streaming path).

    With sampled queries the sums are unbiased estimates, and the layer result carries standard
    errors (``*_se``) and the number of sampled queries; exact sums carry zero variance."""

    fields = SUM_FIELDS

    def update(
        self,
        attn: torch.Tensor,
        attention_mask: torch.Tensor,
        causal: bool = False,
        window: int | None = None,
        sink: bool = False,
        step: int | None = None,
    ) -> None:
        """One attention call's sums; calls of the same forward ``step`` (a looped block) share a record."""
        raw, n, norm, nn_ = attention_entropy_sums(attn, attention_mask, causal, window, sink)
        values = dict(
            raw_sum=raw,
            raw_count=n,
            norm_sum=norm,
            norm_count=nn_,
            raw_var=torch.zeros_like(raw),
            mean_var=0.0,
            norm_mean_var=0.0,
            sampled=0.0,
        )
        self.add(**values) if step is None else self.add_to_step(step, **values)

    def update_streaming(self, *sums: torch.Tensor) -> None:
        """The sums of ``streaming_entropy_sums``, in ``SUM_FIELDS`` order (a wrong count raises)."""
        self.add(**dict(zip(SUM_FIELDS, sums, strict=True)))

    @staticmethod
    def layer_mean(s: dict[str, torch.Tensor]) -> torch.Tensor:
        """The layer's mean entropy (the mean over heads of each head's mean) from totals ``[..., H]``:
        ``[...]``, NaN where no query was counted. One formula for a result and for a whole bootstrap."""
        head = s["raw_sum"] / s["raw_count"].clamp_min(1)
        return torch.where(s["raw_count"].sum(-1) == 0, math.nan, head.mean(-1))

    def compute_from(self, s: dict[str, torch.Tensor]) -> dict:
        head = s["raw_sum"] / s["raw_count"].clamp_min(1)
        head_norm = s["norm_sum"] / s["norm_count"].clamp_min(1)
        empty = float(s["raw_count"].sum()) == 0
        out = {
            "attention_entropy": float(self.layer_mean(s)),
            "attention_entropy_norm": math.nan if empty else float(head_norm.mean()),
            "head_entropy": [math.nan if empty else float(v) for v in head],
        }
        if float(s["sampled"].sum()) > 0:
            count, norm_count = float(s["raw_count"][0]), float(s["norm_count"].mean())
            out["attention_entropy_se"] = standard_error(float(s["mean_var"].sum()), count)
            out["attention_entropy_norm_se"] = standard_error(float(s["norm_mean_var"].sum()), norm_count)
            out["head_entropy_se"] = [standard_error(float(v), count) for v in s["raw_var"]]
            out["entropy_queries_sampled"] = int(s["sampled"].sum())
        return out


class EntropyProbe(ProbePlugin):
    """Per-head entropy sums of each layer: streamed beside SDPA (``ctx.attention_mode ==
    'streaming'``), or reduced from the eager map inside the layer's forward hook.

    ``queries=N`` (streaming only) samples N valid query positions per sequence, seeded by ``seed``;
    ``fused=False`` takes the chunked path even where a fused kernel could give the entropy."""

    name = "attention_entropy"

    def __init__(self, queries: int | None = None, seed: int = 0, chunk: int | None = None, fused: bool = True) -> None:
        super().__init__()
        if queries is not None and queries < 1:
            raise ConfigError(f"--entropy-queries must be at least 1, got {queries}")
        self.queries, self.seed, self.chunk, self.fused = queries, seed, chunk, fused

    def attach(self, ctx) -> None:
        self.layers = [AttentionEntropy() for _ in ctx.attention]
        self.unmeasured: dict[int, str] = {}  # layer -> why its map cannot give an exact entropy
        streaming = getattr(ctx, "attention_mode", "eager") == "streaming"
        if self.queries is not None and not streaming:
            raise ConfigError("--entropy-queries needs the streaming attention path (attention='streaming')")
        if streaming:
            self._attach_sinks(ctx)
            return
        self.hooked = {i for i, module in enumerate(ctx.attention) if module is not None}
        self.seen: set[int] = set()  # hooked layers whose module ran in this step
        for layer in sorted(self.hooked):  # a block without softmax attention (state-space, linear): entropy stays NaN
            self.handles.append(ctx.attention[layer].register_forward_hook(self._hook(ctx, layer)))

    def _attach_sinks(self, ctx) -> None:
        generator = torch.Generator().manual_seed(self.seed) if self.queries is not None else None
        options = {
            "queries": self.queries,
            "generator": generator,
            "fused": self.fused,
            **({"chunk": self.chunk} if self.chunk else {}),
        }
        self.last_forward = [-1] * len(self.layers)
        for i, module in enumerate(ctx.attention):
            if module is None:  # no softmax attention in this block: nothing to stream, entropy stays NaN
                self.last_forward[i] = None
                continue
            SINKS[module] = self._sink(ctx, i, options)
            self.handles.append(_SinkHandle(module))

    def _sink(self, ctx, i: int, options: dict):
        def sink(query, key, mask, *, scaling, causal):
            # once per model forward: a gradient-checkpointing recompute in backward calls attention again
            if ctx.active and self.last_forward[i] != ctx.forwards:
                self.last_forward[i] = ctx.forwards
                self.layers[i].update_streaming(
                    *streaming_entropy_sums(
                        query, key, mask, ctx.attention_mask, scaling=scaling, causal=causal, **options
                    )
                )

        return sink

    def resampled_profile(self, draws: torch.Tensor) -> torch.Tensor:
        """Each layer's mean entropy on every bootstrap resample at once: ``[R, layers]``."""
        return torch.stack([acc.layer_mean(acc.resampled_totals(draws)) for acc in self.layers], 1)

    def after_backward(self, ctx) -> None:
        if ctx.active and getattr(self, "hooked", None):
            for layer in sorted(self.hooked - self.seen):
                self.layers[layer].records.clear()  # no partial mean over the batches where it did run
                self.unmeasured[layer] = (
                    "the attention module found at discovery did not run (the model replaced or bypassed it in its "
                    "forward, as BigBird swaps block-sparse for full attention on short inputs): entropy is left out "
                    "(NaN); the gradient metrics are kept"
                )
            self.seen = set()
        missing = [i for i, f in enumerate(getattr(self, "last_forward", ())) if f is not None and f != ctx.forwards]
        if ctx.active and missing:
            raise ArchitectureError(
                f"layers {missing} ran no streaming attention in this step (was attn_implementation changed while "
                "the probe was attached?); the entropy would be missing"
            )

    def summary(self, batches: list[int] | None = None) -> dict:
        """The layers whose maps are not over the input's tokens, and why (said in the diagnosis)."""
        unmeasured = getattr(self, "unmeasured", {})
        return {"unmeasured_layers": sorted(unmeasured), "why": next(iter(unmeasured.values()))} if unmeasured else {}

    def _hook(self, ctx, layer: int):
        acc = self.layers[layer]

        def hook(module, args, output):
            if not ctx.active:
                return
            self.seen.add(layer)
            if layer in self.unmeasured:
                return
            attn = _map_of(output, ctx.spec.map_index)
            if (attn is None or attn.dim() != 4) and getattr(
                ctx.inner.config, "_attn_implementation", "eager"
            ) != "eager":
                raise ArchitectureError(
                    f"{type(module).__name__} returned no attention map; the probe needs attn_implementation='eager'"
                )
            why = no_map(module) if attn is None or attn.dim() != 4 else off_token_map(attn, ctx.attention_mask)
            if why:  # entropy stays NaN for this layer: never a number over the wrong tokens
                acc.records.clear()
                self.unmeasured[layer] = why
                return
            acc.update(
                attn,
                ctx.attention_mask,
                ctx.spec.causal,
                attention_window(module),
                sink=getattr(module, "sinks", None) is not None,
                step=ctx.forwards,
            )

        return hook


def no_map(module) -> str:
    """Why a module under eager attention gives no map: its attention is not a softmax map at all
    (MRA's multi-resolution approximation, YOSO's hashing), so there is no distribution to measure."""
    return (
        f"{type(module).__name__} returns no attention map even under eager attention (an approximate or "
        "kernelised attention, not a softmax over the tokens): entropy does not apply and is left out (NaN); "
        "the gradient metrics are kept"
    )


def off_token_map(attn: torch.Tensor, attention_mask: torch.Tensor) -> str | None:
    """Why an eager map ``[B, H, Tq, Tk]`` is not one row per input token over the input's tokens
    (pooled queries in Funnel, downsampled characters in CANINE, prompt tokens prepended in CPM-Ant,
    Longformer's banded local scores), else None: such a map cannot be matched to the padding mask,
    so its entropy over the real tokens cannot be measured exactly."""
    b, t = attention_mask.shape
    if attn.shape[0] == b and tuple(attn.shape[2:]) == (t, t):
        return None
    return (
        f"its attention map has shape {tuple(attn.shape)} for {b} sequences of {t} tokens (pooled, downsampled, "
        "banded or extended positions): it is not over the input's tokens, so entropy over the real tokens "
        "cannot be measured exactly and is left out (NaN); the gradient metrics are kept"
    )


def _map_of(output, index: int):
    """The eager map in an attention module's output tuple (``ArchSpec.map_index``: T5 puts its
    position bias, a 4-D tensor of logits, before the map), or None where there is none (a
    quantised model's nested tuple is read at its first element)."""
    if isinstance(output, (tuple, list)) and output and isinstance(output[0], (tuple, list)):
        output = output[0]  # I-BERT returns ((output, map), scaling factors)
    if not isinstance(output, (tuple, list)) or len(output) < 2 or not -len(output) <= index < len(output):
        return None
    return output[index] if torch.is_tensor(output[index]) else None


class _SinkHandle:
    """Removes a streaming sink like a hook handle, so ``ProbePlugin.detach`` treats both alike."""

    def __init__(self, module) -> None:
        self.module = module

    def remove(self) -> None:
        SINKS.pop(self.module, None)
