"""Batches for training and evaluation as ``DataLoader``s that accelerate shards across processes.

Training: each optimizer step takes one *global* batch of ``batch_size × world × grad_accum``
examples, grouped by length exactly as one process with that batch size would group them; it is cut
into ``world × grad_accum`` micro-batches (rank r gets micro-batches r, r + world, …: accelerate's
round-robin sharding). Each micro-batch carries a loss weight so that the averaged gradient equals
the gradient of the mean loss over the global batch even when the last batch does not divide evenly;
a rank left without examples gets one zero-weight example, so every rank runs the same steps.

Evaluation: fixed shortest-first batches; under several processes accelerate pads the last round
with duplicates and ``gather_for_metrics`` drops them, so each example is counted exactly once.
"""

from __future__ import annotations

import torch
from torch.utils.data import DataLoader, Dataset

from ..data import EncodedSplit
from ..data.batching import length_grouped_order


class _Items(Dataset):
    def __init__(self, items: list):
        self.items = items

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i):
        return self.items[i]


def micro_batches(
    split: EncodedSplit, batch_size: int, world: int, accum: int, seed: int
) -> list[list[tuple[int, float]]]:
    """The epoch's micro-batches, each a list of (row, loss weight); a multiple of world × accum of them."""
    parts = world * accum
    out = []
    for rows in length_grouped_order([len(x) for x in split.ids], batch_size * parts, seed):
        for i in range(parts):  # contiguous cuts whose sizes differ by at most one
            lo, hi = i * len(rows) // parts, (i + 1) * len(rows) // parts
            weight = (hi - lo) * parts / len(rows)
            out.append([(r, weight) for r in rows[lo:hi]] or [(rows[0], 0.0)])
    return out


def train_loader(split: EncodedSplit, batch_size: int, world: int, accum: int, seed: int, accelerator) -> DataLoader:
    """Yields (batch, weight) on the accelerator's device; accelerate hands each rank its share."""
    batches = micro_batches(split, batch_size, world, accum, seed)

    def collate(items):
        return split.collate_rows([r for r, _ in items]), torch.tensor(items[0][1])

    loader = DataLoader(_Items([it for b in batches for it in b]), batch_sampler=_Slices(batches), collate_fn=collate)
    return accelerator.prepare_data_loader(loader)


class _Slices:
    """A batch sampler over the flattened items: batch k is positions [start_k, end_k)."""

    def __init__(self, batches: list[list]):
        self.bounds, start = [], 0
        for b in batches:
            self.bounds.append(list(range(start, start + len(b))))
            start += len(b)

    def __iter__(self):
        return iter(self.bounds)

    def __len__(self) -> int:
        return len(self.bounds)


def eval_loader(split: EncodedSplit, batch_size: int, accelerator) -> DataLoader:
    """Shortest-first fixed batches (half the padded work), sharded by accelerate."""
    loader = DataLoader(_Items(split.row_order(by_length=True)), batch_size=batch_size, collate_fn=split.collate_rows)
    return accelerator.prepare_data_loader(loader)
