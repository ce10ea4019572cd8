"""What every selection rule reads and returns (``selectors.md`` §0, §9): ``RuleInputs`` and
``BlockScores``, plus the block matrices the weight rules score.

A rule returns the *raw* metric per block and the end that is selected (``direction``); only
``BlockScores.select`` applies the direction, so no rule flips a sign by itself. Rules read what
they need from ``RuleInputs``: the weights (``weights``), forward features (``forward``) or the
probe's backward profiles (``backward``); a missing input is a one-line ``ConfigError``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np
from torch import nn

from ..errors import ConfigError
from .spectra import Spectra

NEEDS_TEXT = {
    "weights": "the model's weights",
    "forward": "data (a forward pass over probe batches)",
    "backward": "data with labels (a forward and backward pass over probe batches)",
}


@dataclass
class BlockScores:
    """One rule's verdict on every block: raw values (NaN = not scorable) and the selected end."""

    rule: str
    raw: list[float]
    direction: str  # "high" | "low" | "none" (random/all: no order)
    per_module: dict[str, float] = field(default_factory=dict)
    meta: dict = field(default_factory=dict)
    picker: Callable[[int], list[int]] | None = field(default=None, repr=False, compare=False)

    def to_dict(self) -> dict:
        return {
            "rule": self.rule,
            "raw": self.raw,
            "direction": self.direction,
            "per_module": self.per_module,
            "meta": self.meta,
        }

    def order(self) -> list[int]:
        """Blocks from most to least preferred: by direction, NaN last, ties to the lower index."""
        raw = np.asarray(self.raw, dtype=float)
        key = -raw if self.direction == "high" else raw
        key = np.where(np.isfinite(key), key, np.inf)
        return np.lexsort((np.arange(len(raw)), key)).tolist()

    def select(self, k: int, skip_best: int = 0) -> list[int]:
        """The ``k`` preferred blocks (after skipping the ``skip_best`` most preferred), sorted."""
        n = len(self.raw)
        check_k(k, n)
        if self.picker is not None:
            return sorted(self.picker(k))
        if skip_best + k > n:
            raise ConfigError(f"cannot skip {skip_best} and still choose {k} of {n} blocks")
        return sorted(self.order()[skip_best : skip_best + k])


def check_k(k: int, n: int) -> None:
    if not 1 <= k <= n:
        raise ConfigError(f"a budget of {k} blocks is impossible for a {n}-block model; choose 1 <= K <= {n}")


@dataclass
class RuleInputs:
    """Everything a rule may read. ``profiles`` holds per-block lists from the probe
    (``attention_entropy``, ``activation_grad_norm``, ``param_grad_norm``, ``io_cka``)."""

    num_layers: int
    blocks: list[nn.Module] | None = None  # the model's transformer blocks (``models.get_blocks``)
    profiles: dict[str, list[float]] = field(default_factory=dict)
    seed: int = 0
    spectra: Spectra | None = None  # singular values of the block matrices (a scanned checkpoint)

    def weight_spectra(self, rule: str) -> Spectra:
        """The block matrices' spectra: scanned ones, else computed lazily from ``blocks`` and kept,
        so rules that read the same spectrum share one SVD per matrix."""
        if self.spectra is None:
            self.spectra = Spectra.of_matrices(weight_matrices(self.blocks, rule))
        return self.spectra

    def profile(self, key: str, rule: str) -> list[float]:
        if key not in self.profiles:
            need = "forward" if key == "io_cka" else "backward"
            raise ConfigError(f"rule {rule!r} needs {NEEDS_TEXT[need]}; none was given (it cannot run weights-only)")
        values = list(self.profiles[key])
        if len(values) != self.num_layers:
            raise ConfigError(f"profile {key!r} has {len(values)} values for {self.num_layers} blocks")
        return values


# --------------------------------------------------------------------------- weight matrices


def block_matrices(blocks) -> list[dict[str, nn.Parameter]]:
    """Per block, its 2-D weight matrices keyed by the exact path after the block index (the *type*):
    attention and MLP projections, never embeddings, norms, pooler or head. LoRA factors of a PEFT
    wrapper are skipped and a wrapped layer is named as the base layer it wraps."""
    out = []
    for block in blocks:
        mats: dict[str, nn.Parameter] = {}
        for path, module in block.named_modules():
            w = module._parameters.get("weight")
            if w is None or w.ndim != 2 or isinstance(module, nn.Embedding) or "lora_" in path:
                continue
            if "original_module" in path or "modules_to_save" in path:
                continue
            mats[path.replace(".base_layer", "")] = w
        out.append(mats)
    return out


def weight_matrices(blocks, rule: str) -> list[dict[str, nn.Parameter]]:
    if blocks is None:
        raise ConfigError(f"rule {rule!r} needs {NEEDS_TEXT['weights']}; no model was given")
    mats = block_matrices(blocks)
    meta = [t for m in mats for t, w in m.items() if w.is_meta]
    if meta:
        raise ConfigError(
            f"rule {rule!r} reads weights, but the model's weights are on the meta device "
            f"(e.g. {meta[0]}); load the real weights first"
        )
    return mats


def within_type_percentile(values: list[dict[str, float]]) -> list[float]:
    """Block score = mean over module types of the within-type percentile rank (0 = lowest, 1 = highest,
    ties averaged) over the blocks [ours, §0]: spectral metrics depend on shape, so raw values of
    different types are never mixed. A block with no finite value scores NaN."""
    from scipy.stats import rankdata

    types = sorted({t for row in values for t in row})
    sums, counts = np.zeros(len(values)), np.zeros(len(values))
    for t in types:
        idx = [i for i, row in enumerate(values) if t in row and np.isfinite(row[t])]
        if not idx:
            continue
        ranks = rankdata([values[i][t] for i in idx], method="average")
        pct = (ranks - 1) / (len(idx) - 1) if len(idx) > 1 else np.full(len(idx), 0.5)
        sums[idx] += pct
        counts[idx] += 1
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(counts > 0, sums / np.maximum(counts, 1), np.nan).tolist()
