"""The in-memory text classification split every other module consumes."""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import dataclass, field

from ..errors import DataError


@dataclass
class TextDataset:
    """Parallel lists of texts and integer labels, plus where they came from.

    ``skipped`` counts rows dropped as data errors (empty or non-textual text, bad label).
    """

    texts: list[str]
    labels: list[int]
    name: str = "custom"
    split: str = "train"
    num_labels: int = 2
    skipped: int = 0
    source: str = ""
    meta: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if len(self.texts) != len(self.labels):
            raise DataError(f"{self.name}/{self.split}: {len(self.texts)} texts but {len(self.labels)} labels")

    def __len__(self) -> int:
        return len(self.texts)

    def __getitem__(self, i: int) -> tuple[str, int]:
        return self.texts[i], self.labels[i]

    def label_counts(self) -> dict[int, int]:
        return dict(sorted(Counter(self.labels).items()))

    def subset(self, indices: list[int], split: str | None = None) -> "TextDataset":
        return TextDataset(
            [self.texts[i] for i in indices],
            [self.labels[i] for i in indices],
            self.name,
            split or self.split,
            self.num_labels,
            0,
            self.source,
            dict(self.meta),
        )

    def require_nonempty(self) -> "TextDataset":
        if not self.texts:
            raise DataError(f"{self.name}/{self.split} is empty (0 usable rows, {self.skipped} skipped)")
        return self

    def require_classes(self, at_least: int = 2) -> "TextDataset":
        """Diagnosis and training need both classes; one class gives a degenerate loss."""
        found = len(set(self.labels))
        if found < at_least:
            raise DataError(
                f"{self.name}/{self.split} has {found} class(es) ({self.label_counts()}); need at least {at_least}"
            )
        return self

    def stratified(self, n: int | None, seed: int = 0) -> "TextDataset":
        """A class-balanced-in-proportion subset of size ``n`` (whole set when n is None or >= len)."""
        if n is None or n >= len(self):
            return self
        return self.subset(self.stratified_indices(n, seed))

    def stratified_indices(self, n: int, seed: int = 0) -> list[int]:
        """The sorted row indices ``stratified(n, seed)`` keeps: also a held-out cut (TREC validation)."""
        if n <= 0:
            raise DataError(f"a subset of {n} examples was asked for; use a positive number")
        rng = random.Random(seed)
        by_label: dict[int, list[int]] = {}
        for i, y in enumerate(self.labels):
            by_label.setdefault(y, []).append(i)
        chosen: list[int] = []
        labels = sorted(by_label)
        quotas = {y: int(n * len(by_label[y]) / len(self)) for y in labels}
        for y in labels[: n - sum(quotas.values())]:  # hand out the rounding remainder
            quotas[y] += 1
        for y in labels:
            idx = by_label[y][:]
            rng.shuffle(idx)
            chosen += idx[: quotas[y]]
        return sorted(chosen)
