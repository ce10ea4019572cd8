"""Output saturation: the first link of the gradient chain.

With softmax + cross-entropy the gradient of an example's loss with respect to its logits is p − y,
so an example the model gets right with confidence sends back almost nothing and a confident mistake
sends back almost the largest possible signal (‖p − y‖₂ ≤ √2). Everything further down (‖∂L/∂h‖,
parameter gradients) is this signal transported through the network's Jacobians.

Per prediction row (a sequence for a classifier; each valid next-token position for a causal LM,
where HF's convention makes ``logits[:, t]`` predict ``labels[:, t + 1]``) ``output_saturation``
gives the max softmax probability, the true-class probability, ‖p − y‖₂ and correctness (the
prediction is ``argmax`` of the logits, the lowest class on ties, as in ``training.evaluate``).
``OutputSaturation`` accumulates sums over batches and ranks: means, a 10-bin confidence histogram,
the shares above 0.9 / 0.99, ‖p − y‖ for correct vs wrong rows, ECE (10 equal-width bins) and the
share of the logit gradient (Σ‖p − y‖) carried by confident (> 0.9) wrong answers. ``OutputProbe``
reads the logits of the probe's own forward pass and, per block, splits ‖∂L/∂h‖ between the tokens
of wrong and right examples, so a difference in gradient can be traced to the share of mistakes or
to the gradient each mistake sends.
"""

from __future__ import annotations

import math

import torch

from ..errors import DataError
from ..models.architectures import first_tensor
from .accumulate import ProbePlugin, SumAccumulator
from .grad_norms import activation_grad_sums

IGNORE = -100
BINS = 10
CONFIDENT = 0.9
SATURATED = 0.99


def at_least_fp32(t: torch.Tensor) -> torch.Tensor:
    """At least fp32 (half logits lose the small probabilities); fp64 stays fp64."""
    return t.to(torch.promote_types(t.dtype, torch.float32))


def selected_rows(
    logits: torch.Tensor, labels: torch.Tensor, *, shift: bool = False, ignore_index: int = IGNORE
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(logits as rows ``[M, C]``, a view where the logits are contiguous; ``[N]`` indices of the
    rows whose label is not ignored; their ``[N]`` labels; ``[N]`` example index). The rows
    ``output_rows`` copies, named instead of copied, so they can be read a chunk at a time."""
    z = logits.unsqueeze(-1) if logits.dim() == 1 else logits
    index = torch.arange(z[..., 0].numel(), device=z.device).reshape(z.shape[:-1])
    y = labels
    if shift:
        index, y = index[:, :-1], y[:, 1:]
    example = torch.arange(y.shape[0], device=y.device).reshape(-1, *[1] * (y.dim() - 1)).expand(y.shape)
    index, y, example = index.reshape(-1), y.reshape(-1), example.reshape(-1)
    if y.numel() != index.numel():
        raise DataError(f"{index.numel()} logit rows but {y.numel()} labels")
    keep = y != ignore_index
    return z.reshape(-1, z.shape[-1]), index[keep.to(index.device)], y[keep].long(), example[keep]


def output_rows(
    logits: torch.Tensor, labels: torch.Tensor, *, shift: bool = False, ignore_index: int = IGNORE
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """([N, C] fp32 logits, [N] labels, [N] example index) of the rows whose label is not ignored
    (the logits keep their graph: a loss may be built on them). ``shift``: causal-LM logits [B, T, V]
    and labels [B, T]; position t predicts label t + 1. Rows are selected before the cast, so a
    bf16 LM's full [B, T, V] is never copied to fp32."""
    flat, index, y, example = selected_rows(logits, labels, shift=shift, ignore_index=ignore_index)
    return at_least_fp32(flat.index_select(0, index)), y, example


def signed(y: torch.Tensor) -> torch.Tensor:
    """Binary labels {0,1} or {-1,+1} -> {-1,+1}."""
    return torch.where(y > 0, 1.0, -1.0)


def true_class_prob(z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """p(y) per row of [N, C] logits; one logit column is a binary sigmoid output."""
    if z.shape[1] == 1:
        return torch.sigmoid(signed(y) * z[:, 0])
    return z.softmax(-1).gather(1, y.unsqueeze(1))[:, 0]


@torch.no_grad()
def grad_weights(logits: torch.Tensor, labels: torch.Tensor, ignore_index: int = IGNORE) -> torch.Tensor:
    """Per-example gradient weight |dl/dyhat|: sigma(-y*yhat) (binary) or 1 - p_y (multi-class)."""
    z, y, _ = output_rows(logits, labels, ignore_index=ignore_index)
    return 1.0 - true_class_prob(z, y)


@torch.no_grad()
def saturated_fraction(logits, labels, threshold: float = SATURATED, ignore_index: int = IGNORE) -> float:
    """Share of examples with p(correct) > threshold (their gradient is nearly switched off)."""
    z, y, _ = output_rows(logits, labels, ignore_index=ignore_index)
    return float((true_class_prob(z, y) > threshold).float().mean()) if len(y) else 0.0


def check_labels(labels: torch.Tensor, classes: int, ignore_index: int = IGNORE) -> None:
    """One-line errors for labels a loss would crash on or silently average to NaN."""
    valid = labels[labels != ignore_index]
    if valid.numel() == 0:
        raise DataError(f"a batch has no labelled example: every label is {ignore_index} (ignored)")
    bad = valid[(valid < 0) | (valid >= max(classes, 2))]
    if bad.numel():
        raise DataError(
            f"label ids {sorted(set(bad.tolist()))[:5]} are outside the model's {max(classes, 2)} classes "
            f"(0 … {max(classes, 2) - 1}; {ignore_index} marks an ignored position)"
        )


ROW_CHUNK_ELEMENTS = 1 << 22  # logits (rows × classes) copied to fp32 and soft-maxed at once: 16 MB


@torch.no_grad()
def output_saturation(
    logits: torch.Tensor,
    labels: torch.Tensor,
    *,
    shift: bool = False,
    ignore_index: int = IGNORE,
    chunk_rows: int | None = None,
) -> dict[str, torch.Tensor]:
    """Per non-ignored row: ``confidence`` (max p), ``p_true``, ``grad_norm`` = ‖p − y‖₂ (the gradient
    of the row's cross-entropy at its logits; |σ − y| for a single binary logit), ``correct`` and
    ``example`` (the batch index the row belongs to).

    Rows are read ``chunk_rows`` at a time (default: ``ROW_CHUNK_ELEMENTS`` logits): every number is
    a function of its own row, so chunking changes no value, but a causal LM's fp32 copy and softmax
    of ``[B·T, vocabulary]`` (311 MB each at T = 512 with 152k tokens) never exist beside the logits."""
    flat, index, y, example = selected_rows(logits, labels, shift=shift, ignore_index=ignore_index)
    classes = flat.shape[1]
    check_labels(y, classes, ignore_index)
    if classes == 1:
        z = at_least_fp32(flat.index_select(0, index))[:, 0]
        s = torch.sigmoid(z)
        target = (y > 0).to(s.dtype)
        p_true = torch.where(target > 0, s, 1 - s)
        return {
            "confidence": torch.maximum(s, 1 - s),
            "p_true": p_true,
            "grad_norm": (s - target).abs(),
            "correct": (z > 0) == (target > 0),
            "example": example,
        }
    step = chunk_rows or max(1, ROW_CHUNK_ELEMENTS // classes)
    parts = [
        _softmax_rows(at_least_fp32(flat.index_select(0, index[i : i + step])), y[i : i + step])
        for i in range(0, len(y), step)
    ] or [_softmax_rows(at_least_fp32(flat[:0]), y)]
    rows = {k: torch.cat([part[k] for part in parts]) for k in parts[0]}
    return {**rows, "example": example}


def _softmax_rows(z: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
    """max p, p(y), ‖p − y‖₂ and argmax == y of ``[n, C]`` logits (C ≥ 2)."""
    p = z.softmax(-1)
    confidence = p.max(-1).values
    p_true = p.gather(1, y[:, None])[:, 0]
    p.scatter_add_(1, y[:, None], -torch.ones_like(p_true)[:, None])  # p − y in place: no second [n, C]
    return {"confidence": confidence, "p_true": p_true, "grad_norm": p.norm(dim=-1), "correct": z.argmax(-1) == y}


def saturation_sums(rows: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The sums ``OutputSaturation`` keeps for one batch, by field (all but ``nonfinite``)."""
    conf, grad = rows["confidence"].double(), rows["grad_norm"].double()
    right = rows["correct"]
    wrong = ~right
    confident_wrong = wrong & (conf > CONFIDENT)
    bins = (conf * BINS).floor().clamp(0, BINS - 1).long()

    def per_bin(values: torch.Tensor) -> torch.Tensor:
        return torch.zeros(BINS, dtype=torch.float64).index_add_(0, bins.cpu(), values.double().cpu())

    return {
        "rows": torch.tensor(float(len(conf))),
        "correct": right.sum(),
        "conf_sum": conf.sum(),
        "p_true_sum": rows["p_true"].double().sum(),
        "grad_sum": grad.sum(),
        "grad_sum_correct": grad[right].sum(),
        "grad_sum_wrong": grad[wrong].sum(),
        "over_confident": (conf > CONFIDENT).sum(),
        "over_saturated": (conf > SATURATED).sum(),
        "p_true_saturated": (rows["p_true"] > SATURATED).sum(),
        "confident_wrong": confident_wrong.sum(),
        "grad_sum_confident_wrong": grad[confident_wrong].sum(),
        "bin_count": per_bin(torch.ones_like(conf)),
        "bin_conf_sum": per_bin(conf),
        "bin_correct": per_bin(right),
    }


def expected_calibration_error(count, conf_sum, correct_sum) -> float:
    """Σ_b (n_b / N)·|accuracy_b − confidence_b| over equal-width bins (empty bins add nothing)."""
    count, conf_sum, correct_sum = (torch.as_tensor(v, dtype=torch.float64) for v in (count, conf_sum, correct_sum))
    n = float(count.sum())
    return float((correct_sum - conf_sum).abs().sum() / n) if n else math.nan


class OutputSaturation(SumAccumulator):
    """Streams the output numbers over batches; a batch with non-finite logits is counted, not added."""

    fields = (
        "rows",
        "correct",
        "conf_sum",
        "p_true_sum",
        "grad_sum",
        "grad_sum_correct",
        "grad_sum_wrong",
        "over_confident",
        "over_saturated",
        "p_true_saturated",
        "confident_wrong",
        "grad_sum_confident_wrong",
        "bin_count",
        "bin_conf_sum",
        "bin_correct",
        "nonfinite",
    )

    def update(self, logits: torch.Tensor, labels: torch.Tensor, *, shift: bool = False) -> dict[str, torch.Tensor]:
        rows = output_saturation(logits, labels, shift=shift)
        self.add_rows(rows)
        return rows

    def add_rows(self, rows: dict[str, torch.Tensor]) -> None:
        if bool(torch.isfinite(rows["confidence"]).all() and torch.isfinite(rows["grad_norm"]).all()):
            self.add(**saturation_sums(rows), nonfinite=0.0)
        else:
            self.add(**{k: torch.zeros(BINS) if k.startswith("bin_") else 0.0 for k in self.fields[:-1]}, nonfinite=1.0)

    def compute_from(self, t: dict[str, torch.Tensor]) -> dict:
        n, right = float(t["rows"]), float(t["correct"])
        wrong = n - right

        def ratio(a, b) -> float:
            return float(a) / float(b) if float(b) else math.nan

        counts = t["bin_count"]
        return {
            "predictions": int(n),
            "accuracy": ratio(right, n),
            "mean_confidence": ratio(t["conf_sum"], n),
            "mean_true_class_prob": ratio(t["p_true_sum"], n),
            "mean_grad_norm": ratio(t["grad_sum"], n),
            "grad_norm_correct": ratio(t["grad_sum_correct"], right),
            "grad_norm_wrong": ratio(t["grad_sum_wrong"], wrong),
            "share_confidence_over_0.9": ratio(t["over_confident"], n),
            "share_confidence_over_0.99": ratio(t["over_saturated"], n),
            "share_true_class_over_0.99": ratio(t["p_true_saturated"], n),
            "wrong_share": ratio(wrong, n),
            "wrong_confident_share": ratio(t["confident_wrong"], wrong),
            "wrong_grad_share": ratio(t["grad_sum_wrong"], t["grad_sum"]),
            "confident_wrong_grad_share": ratio(t["grad_sum_confident_wrong"], t["grad_sum"]),
            "ece": expected_calibration_error(counts, t["bin_conf_sum"], t["bin_correct"]),
            "histogram": {
                "edges": [i / BINS for i in range(BINS + 1)],
                "count": [int(c) for c in counts],
                "mean_confidence": [ratio(s, c) for s, c in zip(t["bin_conf_sum"], counts)],
                "accuracy": [ratio(s, c) for s, c in zip(t["bin_correct"], counts)],
            },
            "nonfinite_batches": int(t["nonfinite"]),
        }


class WrongRightGradSplit(SumAccumulator):
    """One block's ‖∂L/∂h‖ per token, summed separately over the tokens of wrong and right examples."""

    fields = ("wrong_sum", "wrong_tokens", "right_sum", "right_tokens")

    def update(self, grad: torch.Tensor, token_mask: torch.Tensor, wrong: torch.Tensor) -> None:
        mask = token_mask.bool()
        wrong_mask = mask & wrong.to(mask.device)[:, None]
        w_sum, w_n, _, _ = activation_grad_sums(grad, wrong_mask)
        r_sum, r_n, _, _ = activation_grad_sums(grad, mask & ~wrong_mask)
        self.add(wrong_sum=w_sum, wrong_tokens=w_n, right_sum=r_sum, right_tokens=r_n)

    def compute_from(self, t: dict[str, torch.Tensor]) -> dict:
        w_n, r_n = float(t["wrong_tokens"]), float(t["right_tokens"])
        return {
            "activation_grad_norm_wrong": float(t["wrong_sum"]) / w_n if w_n else math.nan,
            "activation_grad_norm_correct": float(t["right_sum"]) / r_n if r_n else math.nan,
            "wrong_token_share": w_n / (w_n + r_n) if w_n + r_n else math.nan,
        }


class OutputProbe(ProbePlugin):
    """The output numbers from the logits of the probe's own forward (no extra pass). Labels are
    checked before the model's loss sees them. A classifier's blocks also get the wrong/right split
    of ‖∂L/∂h‖; a causal LM's per-position gradient mixes later positions' losses, so it gets none."""

    name = "output"

    def attach(self, ctx) -> None:
        self.summary_acc = OutputSaturation()
        self.layers = [WrongRightGradSplit() for _ in ctx.blocks]
        self._labels: torch.Tensor | None = None
        self._wrong: torch.Tensor | None = None
        self.unit = "example"
        inner = ctx.inner
        self.handles.append(inner.register_forward_pre_hook(self._labels_hook(ctx, inner), with_kwargs=True))
        self.handles.append(inner.register_forward_hook(self._logits_hook(ctx)))
        for acc, block in zip(self.layers, ctx.blocks):

            def hook(module, args, output, acc=acc):
                h = first_tensor(output)
                sequence_labels = self._labels is not None and self._labels.dim() == 1
                if ctx.active and torch.is_grad_enabled() and h.requires_grad and sequence_labels:
                    mask = ctx.attention_mask  # the wrong examples are known once the logits exist
                    h.register_hook(lambda g: acc.update(g, mask, self._wrong))

            self.handles.append(block.register_forward_hook(hook))

    def _labels_hook(self, ctx, inner):
        def hook(module, args, kwargs):
            self._labels, self._wrong = None, None
            labels = kwargs.get("labels")
            if not ctx.active or not torch.is_tensor(labels) or labels.is_floating_point():
                return  # float labels (regression, multi-label BCE) have no class to be right or wrong about
            token_level = labels.dim() == 2
            config = getattr(inner, "config", None)
            classes = getattr(config, "vocab_size" if token_level else "num_labels", None)
            if classes is not None:
                check_labels(labels[:, 1:] if token_level else labels, int(classes))
            self._labels = labels

        return hook

    def _logits_hook(self, ctx):
        def hook(module, args, output):
            logits = getattr(output, "logits", None)
            if self._labels is None or not torch.is_tensor(logits):
                return
            token_level = self._labels.dim() == 2
            self.unit = "next-token position" if token_level else "example"
            rows = self.summary_acc.update(logits, self._labels, shift=token_level)
            if not token_level:
                self._wrong = torch.zeros(logits.shape[0], dtype=torch.bool)
                self._wrong[rows["example"].cpu()] = ~rows["correct"].cpu()

        return hook

    def accumulators(self) -> list[SumAccumulator]:
        return [*self.layers, self.summary_acc]

    def num_batches(self) -> int:
        return len(self.summary_acc)

    def summary(self, batches: list[int] | None = None) -> dict:
        """The output section: what one prediction row is, and the accumulated numbers."""
        return {"unit": self.unit, **self.summary_acc.compute(batches)} if len(self.summary_acc) else {}
