"""Remove target examples that also occur in a source set (SST was built from RT snippets)."""

from __future__ import annotations

import re

from .dataset import TextDataset

_NOT_ALNUM = re.compile(r"[^a-z0-9]+")


def normalize(text: str) -> str:
    """Lower-case letters and digits only: undoes the two corpora's different tokenisations."""
    return _NOT_ALNUM.sub("", text.lower())


def overlap_mask(target: TextDataset, source: TextDataset) -> list[bool]:
    """True for each target example whose normalised text is a whole row of the source."""
    seen = {normalize(t) for t in source.texts}
    seen.discard("")
    return [normalize(t) in seen for t in target.texts]


def decontaminate(target: TextDataset, source: TextDataset) -> TextDataset:
    """The target without the examples found in the source; ``meta['removed']`` says how many went."""
    mask = overlap_mask(target, source)
    kept = target.subset([i for i, hit in enumerate(mask) if not hit], split=f"{target.split}-decontaminated")
    kept.meta.update(removed=sum(mask), decontaminated_against=f"{source.name}/{source.split}")
    return kept
