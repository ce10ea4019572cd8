"""User data from CSV, TSV, JSON Lines or Parquet with configurable text and label columns."""
from __future__ import annotations

import csv
import json
import os
from pathlib import Path

from ..errors import DataError
from .dataset import TextDataset
from .tasks import is_textual


def _rows(path: Path):
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".json"):
        with open(path, encoding="utf-8") as f:
            for line in f:
                if line.strip():
                    try:
                        yield json.loads(line)
                    except json.JSONDecodeError:
                        yield None
    elif suffix in (".csv", ".tsv"):
        with open(path, encoding="utf-8", newline="") as f:
            yield from csv.DictReader(f, delimiter="\t" if suffix == ".tsv" else ",")
    elif suffix == ".parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        try:
            table = pq.read_table(path)
        except (pa.ArrowException, OSError) as exc:
            raise DataError(f"{path.name} is not a readable Parquet file: {str(exc).splitlines()[0]}") from None
        yield from table.to_pylist()
    else:
        raise DataError(f"unsupported data file {path.name}: use .csv, .tsv, .jsonl or .parquet")


def load_file(
    path: str | os.PathLike,
    text_column: str = "text",
    label_column: str = "label",
    *,
    label_names: list[str] | None = None,
    split: str = "train",
) -> TextDataset:
    """Read a labelled text file. Labels may be integers or names (mapped in sorted order unless
    ``label_names`` fixes the order). Rows with a missing/empty text or label are skipped and counted."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"data file {path} does not exist")
    raw: list[tuple[str, str]] = []
    skipped = 0
    for row in _rows(path):
        if not isinstance(row, dict):
            skipped += 1
            continue
        if text_column not in row or label_column not in row:
            raise DataError(
                f"{path.name}: no column {text_column!r} or {label_column!r}; columns are {sorted(row)}"
            )
        text, label = str(row[text_column] or "").strip(), str(row[label_column] if row[label_column] is not None else "").strip()
        if text and label and is_textual(text):
            raw.append((text, label))
        else:
            skipped += 1
    if not raw:
        raise DataError(f"{path} has no usable rows ({skipped} skipped)")
    values = sorted({lab for _, lab in raw})
    if label_names is None:
        names = sorted(values, key=int) if all(v.lstrip("-").isdigit() for v in values) else values
    else:
        names = label_names
    if all(v.lstrip("-").isdigit() for v in values) and label_names is None:
        ids = {v: int(v) for v in values}
        if min(ids.values()) < 0:
            raise DataError(f"{path.name}: negative label ids {values}")
        num_labels = max(ids.values()) + 1
    else:
        unknown = set(values) - set(names)
        if unknown:
            raise DataError(f"{path.name}: labels {sorted(unknown)} are not in label_names {names}")
        ids = {v: names.index(v) for v in names}
        num_labels = len(names)
    return TextDataset(
        [t for t, _ in raw], [ids[lab] for _, lab in raw], path.stem, split, num_labels, skipped, str(path),
        {"label_names": [str(n) for n in names]},
    )
