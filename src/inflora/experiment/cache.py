"""Units of work cached under a key derived from their full configuration.

A unit's folder is ``units/<kind>-<key>``; its ``result.json`` is written atomically last, so a
folder without it is unfinished and is resumed (finetune resumes inside a unit at epoch level).
"""
from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

from ..io import atomic_write_json, read_json


def unit_key(config: dict) -> str:
    return hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest()[:12]


class UnitCache:
    def __init__(self, root: Path):
        self.root = Path(root) / "units"

    def folder(self, kind: str, config: dict) -> Path:
        return self.root / f"{kind}-{unit_key(config)}"

    def done(self, kind: str, config: dict) -> dict | None:
        path = self.folder(kind, config) / "result.json"
        return read_json(path) if path.is_file() else None

    def count_done(self) -> int:
        """Finished units in this folder (any kind)."""
        return len(list(self.root.glob("*/result.json"))) if self.root.exists() else 0

    def logged(self, command_line: str, work):
        """``work()`` with its record appended to ``invocations.json`` (also when interrupted: its time
        counts toward the total). Returns ``(result, {"wall_seconds", "units_before", "invocations"})``."""
        before, t0, finished = self.count_done(), time.perf_counter(), False
        try:
            result = work()
            finished = True
        finally:
            wall = time.perf_counter() - t0
            invocations = self.log_invocation({"command": command_line, "wall_seconds": wall, "finished": finished,
                                               "units_before": before, "units_after": self.count_done()})
        return result, {"wall_seconds": wall, "units_before": before, "invocations": invocations}

    def log_invocation(self, record: dict) -> list[dict]:
        """Append one command's record to ``invocations.json`` beside ``units/``; returns them all."""
        path = self.root.parent / "invocations.json"
        records = (read_json(path) if path.is_file() else []) + [record]
        atomic_write_json(path, records)
        return records

    def finish(self, kind: str, config: dict, result: dict) -> dict:
        folder = self.folder(kind, config)
        atomic_write_json(folder / "unit.json", {"kind": kind, "config": config})
        atomic_write_json(folder / "result.json", result)
        return result
