"""Instruction files: JSONL, CSV/TSV or Parquet with prompt/completion columns or a chat list.

Rows that cannot be learned from (no completion, an empty one, a chat without an assistant turn,
a line that is not JSON) are data errors: skipped, counted per reason in ``meta['skipped_reasons']``,
never a crash. A file with no usable row is an error.
"""

from __future__ import annotations

import json
import logging
import os
from collections import Counter
from pathlib import Path

from ..errors import DataError
from .files import _rows, skip_report
from .instructions import InstructionDataset, last_assistant_turn

log = logging.getLogger(__name__)
INSTRUCTION_SUFFIXES = (".jsonl", ".json", ".csv", ".tsv", ".parquet")
MAX_OPTIONS = 10  # completions are treated as labels when there are at most this many distinct ones


def _chat(value):
    """A ``messages`` cell as a list of dicts (CSV cells hold it as JSON text)."""
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError:
            return None
    return list(value) if isinstance(value, (list, tuple)) else None


def _example(row: dict, prompt_column: str, completion_column: str, messages_column: str):
    """(prompt, completion, text) or the reason the row is skipped."""
    if messages_column in row and row[messages_column] is not None:
        messages = _chat(row[messages_column])
        if messages is None or not all(isinstance(m, dict) and "content" in m for m in messages):
            return "malformed chat"
        turn = last_assistant_turn(messages)
        if turn is None:
            return "chat without an assistant turn"
        reply = str(messages[turn]["content"] or "")
        if not reply.strip():
            return "empty completion"
        text = " ".join(str(m.get("content") or "") for m in messages[:turn] if m.get("role") != "system")
        return messages[:turn], reply, text
    if prompt_column not in row:
        return "missing"
    if row.get(completion_column) is None:
        return "no completion"
    completion = str(row[completion_column])
    if not completion.strip():
        return "empty completion"
    prompt = str(row[prompt_column] if row[prompt_column] is not None else "")
    return prompt, completion, prompt


def label_options(completions: list[str], options: list[str] | None) -> list[str]:
    """The label options: given, or found (at most MAX_OPTIONS distinct completions, each used at
    least twice on average); empty when the completions are free text."""
    if options is not None:
        return list(options)
    distinct = sorted(set(completions))
    return distinct if len(distinct) <= MAX_OPTIONS and 2 * len(distinct) <= len(completions) else []


def load_instructions(
    path: str | os.PathLike,
    prompt_column: str = "prompt",
    completion_column: str = "completion",
    *,
    messages_column: str = "messages",
    options: list[str] | None = None,
    split: str = "train",
) -> InstructionDataset:
    """Read an instruction file (column names configurable). ``options`` fixes the label options
    for accuracy by option scoring; by default they are found from the completions."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"data file {path} does not exist")
    if path.suffix.lower() not in INSTRUCTION_SUFFIXES:
        raise DataError(f"unsupported data file {path.name}: use .jsonl, .csv, .tsv or .parquet")
    examples, lines = [], {}
    for number, row in _rows(path):
        got = _example(row, prompt_column, completion_column, messages_column) if isinstance(row, dict) else "not JSON"
        if got == "missing":
            raise DataError(
                f"{path.name}: no column {prompt_column!r} (with {completion_column!r}) or "
                f"{messages_column!r}; columns are {sorted(row)}"
            )
        if isinstance(got, str):
            lines.setdefault(got, []).append(number)
        else:
            examples.append(got)
    reasons = Counter({reason: len(numbers) for reason, numbers in lines.items()})
    if lines:
        log.warning(skip_report(path.name, lines, len(examples) + sum(reasons.values())))
    if not examples:
        raise DataError(f"{path} has no usable rows ({sum(reasons.values())} skipped: {dict(reasons)})")
    completions = [c for _, c, _ in examples]
    opts = label_options(completions, options)
    unknown = sorted(set(completions) - set(opts)) if opts else []
    if unknown:
        raise DataError(f"{path.name}: completions {unknown[:3]} are not among the options {opts}")
    labels = [opts.index(c) for c in completions] if opts else [0] * len(examples)
    return InstructionDataset(
        [t for _, _, t in examples],
        labels,
        path.stem,
        split,
        max(len(opts), 1),
        sum(reasons.values()),
        str(path),
        {"skipped_reasons": dict(reasons), "skipped_lines": lines},
        [p for p, _, _ in examples],
        completions,
        opts,
    )


def is_instruction_file(
    path: str | os.PathLike, prompt_column: str = "prompt", messages_column: str = "messages"
) -> bool:
    """True when the file's first readable row has a prompt or messages column."""
    path = Path(path)
    if not path.is_file() or path.suffix.lower() not in INSTRUCTION_SUFFIXES:
        return False
    for _, row in _rows(path):
        if isinstance(row, dict):
            return prompt_column in row or messages_column in row
    return False


def is_instruction_source(task: str, prompt_column: str = "prompt", messages_column: str = "messages") -> bool:
    """True when ``task`` names instruction data (a built-in instruction task or an instruction file)."""
    from .tasks import is_instruction_task

    return is_instruction_task(str(task)) or is_instruction_file(task, prompt_column, messages_column)
