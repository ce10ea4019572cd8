"""Streaming accumulators built from sums and counts, so they merge across batches and ranks.

Each accumulator keeps one record per batch (for bootstrap resampling) and a running total.
Under ``torch.distributed`` the per-batch records of all ranks are gathered before the sums are
taken, so every rank reports the numbers of a single process over all batches (and can bootstrap).
Rank r probes batches ``r, r + world, r + 2·world, ...`` (``diagnose`` shards with ``[rank::world]``);
``gather_batches`` interleaves the ranks' lists back into that global batch order, so the records,
their float sums and any bootstrap over them are exactly those of one process.
"""

from __future__ import annotations

import torch


def gather_batches(local: list) -> list:
    """All ranks' per-batch lists merged in global batch order (inverse of ``batches[rank::world]``);
    ``local`` itself when ``torch.distributed`` is not initialised."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return local
    everyone: list = [None] * dist.get_world_size()
    dist.all_gather_object(everyone, local)
    longest = max(len(rank_items) for rank_items in everyone)
    return [rank_items[j] for j in range(longest) for rank_items in everyone if j < len(rank_items)]


class SumAccumulator:
    """Per-batch records of named sums. Totals over any subset of batches (a bootstrap resample)
    come from one stacked ``[batches, ...]`` tensor per field, built once and reused while the
    records are unchanged, so a resample costs one indexed sum per field, not a stack of scalars."""

    fields: tuple[str, ...] = ()

    def __init__(self) -> None:
        self.records: list[dict[str, torch.Tensor]] = []
        self._stacked: dict[str, torch.Tensor] = {}
        self._stacked_from: list = []  # the record objects the stack was built from

    def add(self, **values) -> None:
        """One batch's sums, by field name. Every field and nothing else: a missing or unknown name
        raises, so a sum can never be cut off or land in the wrong field."""
        missing, unknown = set(self.fields) - set(values), set(values) - set(self.fields)
        if missing or unknown:
            raise ValueError(
                f"{type(self).__name__}.add: missing fields {sorted(missing)}, unknown fields "
                f"{sorted(unknown)}; its fields are {', '.join(self.fields)}"
            )
        self.records.append({k: torch.as_tensor(values[k], dtype=torch.float64).detach().cpu() for k in self.fields})

    def add_to_step(self, step: int, **values) -> None:
        """``add``, except that a second call for the same model forward ``step`` sums into that
        step's record: a block run several times per forward (looped or recurrent-depth models such
        as HRM, Dory) still gives one record per batch, so bootstrap resamples index batches."""
        if self.records and getattr(self, "_last_step", None) == step:
            self.add(**values)
            extra = self.records.pop()
            self.records[-1] = {k: self.records[-1][k] + extra[k] for k in self.fields}
            return
        self._last_step = step
        self.add(**values)

    def stacked(self) -> dict[str, torch.Tensor]:
        """Each field's records stacked along a new first (batch) dimension."""
        same = len(self._stacked_from) == len(self.records) and all(
            a is b for a, b in zip(self._stacked_from, self.records)
        )
        if not same:
            self._stacked = {k: torch.stack([r[k] for r in self.records]) for k in self.fields}
            self._stacked_from = list(self.records)
        return self._stacked

    def totals(self, batches: list[int] | None = None) -> dict[str, torch.Tensor]:
        if not self.records or (batches is not None and len(batches) == 0):
            return {k: torch.zeros(1, dtype=torch.float64) for k in self.fields}
        stacked = self.stacked()
        if batches is None:
            return {k: v.sum(0) for k, v in stacked.items()}
        idx = torch.as_tensor(batches, dtype=torch.long)
        return {k: v.index_select(0, idx).sum(0) for k, v in stacked.items()}

    def resampled_totals(self, draws: torch.Tensor) -> dict[str, torch.Tensor]:
        """Totals of every row of ``draws`` (``[R, n]`` batch indices, a bootstrap's resamples) in
        one indexed sum per field: ``[R, ...]``, row r the totals ``totals(draws[r])`` gives."""
        if not self.records:
            return {k: torch.zeros(len(draws), 1, dtype=torch.float64) for k in self.fields}
        return {k: v[draws].sum(1) for k, v in self.stacked().items()}

    def compute(self, batches: list[int] | None = None) -> dict:
        return self.compute_from(self.totals(batches))

    def compute_from(self, totals: dict[str, torch.Tensor]) -> dict:  # pragma: no cover - abstract
        raise NotImplementedError

    def __len__(self) -> int:
        return len(self.records)

    def gather(self) -> None:
        """Replace the records by those of every rank, in global batch order (no-op without distributed)."""
        self.records = gather_batches(self.records)


class ProbePlugin:
    """A diagnostic inside the one-pass probe: attaches hooks, keeps one accumulator per layer."""

    name = ""

    def __init__(self) -> None:
        self.handles: list = []
        self.layers: list[SumAccumulator] = []

    def attach(self, ctx) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    def after_backward(self, ctx) -> None:
        pass

    def detach(self) -> None:
        for h in self.handles:
            h.remove()
        self.handles.clear()

    def gather(self) -> None:
        for acc in self.accumulators():
            acc.gather()

    def accumulators(self) -> list[SumAccumulator]:
        return list(self.layers)

    def num_batches(self) -> int:
        return max((len(a) for a in self.layers), default=0)

    def layer_results(self, batches: list[int] | None = None) -> list[dict]:
        return [acc.compute(batches) for acc in self.layers]

    def group_results(self, batches: list[int] | None = None) -> dict:
        return {}

    def summary(self, batches: list[int] | None = None) -> dict:
        """Model-level numbers (not per layer), e.g. the output section; empty for per-layer metrics."""
        return {}
