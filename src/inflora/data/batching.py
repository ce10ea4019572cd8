"""Tokenised batches: dynamic padding, length-grouped order for training, fixed probe batches."""

from __future__ import annotations

import random
from typing import Iterator

import torch

from ..errors import DataError
from .dataset import TextDataset


def encode(tokenizer, texts: list[str], max_length: int) -> list[list[int]]:
    return tokenizer(texts, truncation=True, max_length=max_length)["input_ids"]


def collate(
    tokenizer, ids: list[list[int]], labels: list[int] | None, causal_lm: bool = False
) -> dict[str, torch.Tensor]:
    """Pad to the longest sequence in the batch (dynamic padding). For a causal LM the labels are the
    input ids with padding set to -100 (next-token loss); otherwise the class labels."""
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    width = max(len(x) for x in ids)
    input_ids = torch.full((len(ids), width), pad, dtype=torch.long)
    mask = torch.zeros((len(ids), width), dtype=torch.long)
    for i, x in enumerate(ids):
        input_ids[i, : len(x)] = torch.tensor(x)
        mask[i, : len(x)] = 1
    batch = {"input_ids": input_ids, "attention_mask": mask}
    if causal_lm:
        batch["labels"] = input_ids.masked_fill(mask == 0, -100)
    elif labels is not None:
        batch["labels"] = torch.tensor(labels, dtype=torch.long)
    return batch


def probe_batches(
    ds: TextDataset,
    tokenizer,
    *,
    batches: int,
    batch_size: int,
    max_length: int = 128,
    seed: int = 0,
    causal_lm: bool = False,
) -> list[dict[str, torch.Tensor]]:
    """``batches`` fixed, class-stratified, shuffled batches for diagnosis (the same for a given seed)."""
    if batches < 1 or batch_size < 1:
        raise DataError(
            f"need at least one batch of at least one example (got batches={batches}, batch_size={batch_size})"
        )
    ds.require_nonempty()
    if not causal_lm:
        ds.require_classes(2)
    n = min(len(ds), batches * batch_size)
    sub = ds.stratified(n, seed=seed)
    order = list(range(len(sub)))
    random.Random(seed).shuffle(order)
    ids = encode(tokenizer, [sub.texts[i] for i in order], max_length)
    labels = [sub.labels[i] for i in order]
    out = []
    for start in range(0, len(order), batch_size):
        out.append(collate(tokenizer, ids[start : start + batch_size], labels[start : start + batch_size], causal_lm))
    return out[:batches]


def length_grouped_order(lengths: list[int], batch_size: int, seed: int) -> list[list[int]]:
    """Shuffle, sort by length inside mega-batches of 50 batches, cut into batches, shuffle the
    batches: similar lengths share a batch (less padding) while the order stays random."""
    rng = random.Random(seed)
    idx = list(range(len(lengths)))
    rng.shuffle(idx)
    mega = batch_size * 50
    batches: list[list[int]] = []
    for start in range(0, len(idx), mega):
        chunk = sorted(idx[start : start + mega], key=lambda i: -lengths[i])
        batches += [chunk[j : j + batch_size] for j in range(0, len(chunk), batch_size)]
    rng.shuffle(batches)
    return batches


class EncodedSplit:
    """A split tokenised once; yields dynamically padded batches in plain or length-grouped order."""

    def __init__(self, ds: TextDataset, tokenizer, max_length: int, causal_lm: bool = False):
        self.ds, self.tokenizer, self.causal_lm = ds.require_nonempty(), tokenizer, causal_lm
        self.ids = encode(tokenizer, ds.texts, max_length)

    def __len__(self) -> int:
        return len(self.ids)

    def num_batches(self, batch_size: int) -> int:
        return (len(self.ids) + batch_size - 1) // batch_size

    def row_order(self, by_length: bool = False) -> list[int]:
        """Row indices in plain order, or shortest first (stable, so ties keep their plain order)."""
        rows = range(len(self.ids))
        return sorted(rows, key=lambda i: len(self.ids[i])) if by_length else list(rows)

    def batches(
        self, batch_size: int, *, seed: int | None = None, by_length: bool = False
    ) -> Iterator[dict[str, torch.Tensor]]:
        """Plain order; shuffled length groups with ``seed`` (training); or, with ``by_length``, a fixed
        shortest-first order that halves padded evaluation work (same rows in the same order each call)."""
        if seed is not None:
            order = length_grouped_order([len(x) for x in self.ids], batch_size, seed)
        else:
            rows = self.row_order(by_length)
            order = [rows[i : i + batch_size] for i in range(0, len(rows), batch_size)]
        for b in order:
            yield self.collate_rows(b)

    def collate_rows(self, rows: list[int]) -> dict[str, torch.Tensor]:
        """One padded batch of the given rows (what a ``DataLoader`` over row indices collates;
        instruction splits add their completion mask)."""
        return collate(self.tokenizer, [self.ids[i] for i in rows], [self.ds.labels[i] for i in rows], self.causal_lm)
