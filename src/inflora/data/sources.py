"""``load_any``: the one way every command and the API turn a ``--task`` into a split.

A task is a built-in name (``rotten_tomatoes``, ``sst2``, ``rt-instruct``, ...) or a user file
(.csv/.tsv/.jsonl/.parquet): labelled text (text and label columns) or, when it has a prompt or
messages column, instruction data for a causal LM. A user file gives its splits in one of two ways:

* one file per split: a path containing ``{split}``, e.g. ``data/{split}.csv`` reads
  ``data/train.csv``, ``data/validation.csv`` and ``data/test.csv`` (labels named as in train);
* one file: cut once into train/validation/test (80/10/10), stratified by label with a fixed seed,
  so every command that reads the same file sees the same split. ``split="all"`` is the whole file.
"""

from __future__ import annotations

import logging

import os
import random
from functools import lru_cache
from pathlib import Path

from ..errors import DataError
from .dataset import TextDataset
from .files import load_file
from .instruction_files import is_instruction_file, load_instructions
from .tasks import load_task

USER_FILE_SUFFIXES = (".csv", ".tsv", ".jsonl", ".json", ".parquet")
USER_SPLITS = {"train": 0.8, "validation": 0.1, "test": 0.1}
COLUMNS = ("text_column", "label_column", "prompt_column", "completion_column", "messages_column")
SPLIT_SEED = 0  # fixed: the split of a file must not change with a run's seed


def is_user_file(task: str | os.PathLike) -> bool:
    return Path(str(task)).suffix.lower() in USER_FILE_SUFFIXES


def split_indices(
    labels: list[int], split: str, fractions: dict[str, float] = USER_SPLITS, seed: int = SPLIT_SEED
) -> list[int]:
    """Row indices of ``split``: each label's rows are shuffled once (seeded) and cut in order of
    ``fractions``, so the splits are disjoint, cover every row and keep the label proportions."""
    if split not in fractions:
        raise DataError(f"unknown split {split!r} of a user file; choose one of {', '.join(fractions)}, all")
    rng = random.Random(seed)
    by_label: dict[int, list[int]] = {}
    for i, y in enumerate(labels):
        by_label.setdefault(y, []).append(i)
    chosen: list[int] = []
    for y in sorted(by_label):
        idx = by_label[y]
        rng.shuffle(idx)
        start = 0.0
        for name, share in fractions.items():
            lo, hi = round(start * len(idx)), round((start + share) * len(idx))
            start += share
            if name == split:
                chosen += idx[lo:hi]
    return sorted(chosen)


def _read(path: str, split: str, columns: dict, like: TextDataset | None = None) -> TextDataset:
    """One file as labelled text or as instructions; ``like`` (the train file) fixes the label names."""
    prompt, messages = columns.get("prompt_column", "prompt"), columns.get("messages_column", "messages")
    if is_instruction_file(path, prompt, messages):
        return load_instructions(
            path,
            prompt,
            columns.get("completion_column", "completion"),
            messages_column=messages,
            options=like.options if like is not None else None,
            split=split,
        )
    return load_file(
        path,
        columns.get("text_column", "text"),
        columns.get("label_column", "label"),
        label_names=like.meta["label_names"] if like is not None else None,
        split=split,
    )


@lru_cache(maxsize=8)
def _whole_file(path: str, columns: tuple, stamp: tuple | None) -> TextDataset:
    """A single user file, read once per process while it is unchanged (``stamp``), so its
    skipped-rows warning appears once although train, validation and test are cut from it."""
    return _read(path, "all", dict(columns))


def _stamp(path: str) -> tuple | None:
    try:
        st = os.stat(path)
    except OSError:
        return None  # the reader reports the missing file
    return st.st_mtime_ns, st.st_size


def _load_user_file(task: str, split: str, columns: dict) -> TextDataset:
    if "{split}" in task:
        train = _read(task.replace("{split}", "train"), "train", columns)
        return train if split == "train" else _read(task.replace("{split}", split), split, columns, like=train)
    whole = _whole_file(task, tuple(sorted(columns.items())), _stamp(task))
    if split == "all":
        return whole
    part = whole.subset(split_indices(whole.labels, split), split)
    part.meta["split_of"] = {"rows": len(whole), "fractions": USER_SPLITS, "seed": SPLIT_SEED}
    if not len(part):
        raise DataError(
            f"{task}: its {split} split is empty ({len(whole)} usable rows cut 80/10/10); "
            "add rows or give one file per split with {split} in the path"
        )
    return part


def load_any(
    task: str | os.PathLike,
    split: str = "validation",
    data_dir: str | os.PathLike | None = None,
    **columns: str,
) -> TextDataset:
    """A split of a built-in task or of a user file (see the module docstring for how files split).
    ``columns``: ``text_column``/``label_column`` (labelled text; default text, label) and
    ``prompt_column``/``completion_column``/``messages_column`` (instructions; default prompt,
    completion, messages)."""
    unknown = set(columns) - set(COLUMNS)
    if unknown:
        raise DataError(f"unknown column option(s) {sorted(unknown)}; choose from {', '.join(COLUMNS)}")
    if is_user_file(task):
        return _load_user_file(str(task), split, columns)
    _note_ignored_columns(str(task), columns)
    return load_task(str(task), split, data_dir)


COLUMN_DEFAULTS = dict(zip(COLUMNS, ("text", "label", "prompt", "completion", "messages")))
_NOTED: set[tuple[str, str]] = set()


def _note_ignored_columns(task: str, columns: dict) -> None:
    """A column option given with a built-in task is usable but meaningless: say so once, in one line."""
    for name, value in columns.items():
        if value is not None and value != COLUMN_DEFAULTS[name] and (task, name) not in _NOTED:
            _NOTED.add((task, name))
            flag = "--" + name.replace("_", "-")
            logging.getLogger("inflora").warning(
                f"{flag} {value} is ignored: {task} is a built-in task with its own columns"
            )
