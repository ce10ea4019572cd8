"""User data from CSV, TSV, JSON Lines or Parquet with configurable text and label columns."""

from __future__ import annotations

import csv
import io
import json
import logging
import os
from pathlib import Path

from ..errors import DataError
from .dataset import TextDataset
from .tasks import is_textual

log = logging.getLogger(__name__)
SHOW_LINES = 5  # line numbers listed per reason; the count covers them all


def _rows(path: Path):
    """(line number, row dict or None when the line is not a JSON object) for each data row."""
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".json"):
        for number, line in enumerate(read_text(path).split("\n"), 1):
            if line.strip():
                try:
                    row = json.loads(line)
                except (json.JSONDecodeError, RecursionError):
                    row = None
                yield number, row if isinstance(row, dict) else None
    elif suffix in (".csv", ".tsv"):
        reader = csv.DictReader(io.StringIO(read_text(path), newline=""), delimiter="\t" if suffix == ".tsv" else ",")
        try:
            for row in reader:
                yield reader.line_num, {k: v for k, v in row.items() if k is not None}
        except csv.Error as exc:
            raise DataError(
                f"{path.name}: line {reader.line_num}: not readable as {suffix[1:].upper()} ({exc})"
            ) from None
    elif suffix == ".parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        try:
            table = pq.read_table(path)
        except (pa.ArrowException, OSError) as exc:
            raise DataError(f"{path.name} is not a readable Parquet file: {str(exc).splitlines()[0]}") from None
        yield from enumerate(table.to_pylist(), 1)  # row numbers, 1-based
    else:
        raise DataError(f"unsupported data file {path.name}: use .csv, .tsv, .jsonl or .parquet")


def read_text(path: Path) -> str:
    """The file as text: UTF-8 (a BOM is dropped); otherwise Latin-1, which reads any byte, announced
    in one warning naming the first byte that is not UTF-8 (once per version of the file: it is often
    read twice, to sniff its columns and to load it). A NUL byte means a binary or UTF-16/32 file, which Latin-1
    would turn into junk rows: that is an error naming its offset."""
    try:
        data = path.read_bytes()
        stat = path.stat()
    except OSError as exc:
        raise DataError(f"{path.name}: cannot read: {exc.strerror or exc}") from None
    nul = data.find(b"\x00")
    if nul >= 0:
        raise DataError(f"{path.name}: byte {nul} is NUL: a binary or UTF-16 file, not text; save it as UTF-8")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        seen = (str(path.resolve()), stat.st_mtime_ns, stat.st_size)
        if seen not in _ANNOUNCED:
            _ANNOUNCED.add(seen)
            log.warning(
                "%s is not UTF-8 (byte %d is 0x%02x); read it as Latin-1", path.name, exc.start, data[exc.start]
            )
        return data.decode("latin-1")


_ANNOUNCED: set[tuple] = set()  # files whose Latin-1 fallback was announced (one warning per file version)


def skip_report(name: str, skipped: dict[str, list[int]], total: int) -> str:
    """``reviews.jsonl: skipped 3 of 40 rows: malformed JSON at lines 4, 9; empty text or label at line 7``."""
    parts = []
    for reason, lines in skipped.items():
        shown = ", ".join(map(str, lines[:SHOW_LINES])) + (
            f" (+{len(lines) - SHOW_LINES} more)" if len(lines) > SHOW_LINES else ""
        )
        parts.append(f"{reason} at line{'s' if len(lines) > 1 else ''} {shown}")
    count = sum(map(len, skipped.values()))
    return f"{name}: skipped {count} of {total} rows: " + "; ".join(parts)


def _read_pairs(path: Path, text_column: str, label_column: str) -> tuple[list[tuple[str, str]], dict[str, list[int]]]:
    raw: list[tuple[str, str]] = []
    skipped: dict[str, list[int]] = {}
    for number, row in _rows(path):
        if row is None:
            skipped.setdefault("malformed JSON (not an object)", []).append(number)
            continue
        if text_column not in row or label_column not in row:
            raise DataError(f"{path.name}: no column {text_column!r} or {label_column!r}; columns are {sorted(row)}")
        text, label = (
            str(row[text_column] or "").strip(),
            str(row[label_column] if row[label_column] is not None else "").strip(),
        )
        if not (text and label):
            skipped.setdefault("empty text or label", []).append(number)
        elif not is_textual(text):
            skipped.setdefault("text without a letter", []).append(number)
        else:
            raw.append((text, label))
    return raw, skipped


def load_file(
    path: str | os.PathLike,
    text_column: str = "text",
    label_column: str = "label",
    *,
    label_names: list[str] | None = None,
    split: str = "train",
) -> TextDataset:
    """Read a labelled text file. Labels may be integers or names (mapped in sorted order unless
    ``label_names`` fixes the order). Rows that are malformed or have an empty/letterless text or an
    empty label are skipped, counted in ``.skipped``, listed by line in ``.meta["skipped_lines"]``
    and reported in one warning (first few line numbers per reason, and the count)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"data file {path} does not exist")
    raw, skipped_lines = _read_pairs(path, text_column, label_column)
    skipped = sum(map(len, skipped_lines.values()))
    if skipped:
        log.warning(skip_report(path.name, skipped_lines, len(raw) + skipped))
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
        [t for t, _ in raw],
        [ids[lab] for _, lab in raw],
        path.stem,
        split,
        num_labels,
        skipped,
        str(path),
        {"label_names": [str(n) for n in names], "skipped_lines": skipped_lines},
    )
