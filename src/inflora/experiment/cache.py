"""Units of work cached under a key derived from their full configuration.

A unit's folder is ``units/<kind>-<key>``; its ``result.json`` is written atomically last, so a
folder without it is unfinished and is resumed (finetune resumes inside a unit at epoch level).
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path
from typing import Any, Optional

from pydantic import BaseModel, ConfigDict

from ..diagnosis_schema import DiagnosisFile
from ..io import atomic_write_json
from ..validate import load_json


class Invocation(BaseModel):
    """One record of ``invocations.json``."""

    model_config = ConfigDict(extra="forbid", strict=True)
    command: str
    wall_seconds: float
    finished: bool
    units_before: int
    units_after: int


class ArmResult(BaseModel):
    """What ``compare`` reads back from an arm's ``result.json`` (more keys may follow)."""

    model_config = ConfigDict(extra="allow", strict=True)
    rule: str
    seed: int
    r: int
    lora_params: Optional[int] = None
    layers: list[int]
    trainable_params: int
    accuracy: dict[str, Optional[float]]


# A cached unit's result.json is read back as trusted numbers: check its shape first.
RESULT_SCHEMAS = {"diagnose": DiagnosisFile, "arm": ArmResult}


def unit_key(config: dict) -> str:
    return hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest()[:12]


class UnitCache:
    def __init__(self, root: Path):
        self.root = Path(root) / "units"

    def folder(self, kind: str, config: dict) -> Path:
        return self.root / f"{kind}-{unit_key(config)}"

    def done(self, kind: str, config: dict) -> dict | None:
        path = self.folder(kind, config) / "result.json"
        return load_json(path, RESULT_SCHEMAS.get(kind, dict[str, Any])) if path.is_file() else None

    def count_done(self) -> int:
        """Finished units in this folder (any kind)."""
        return len(list(self.root.glob("*/result.json"))) if self.root.exists() else 0

    def logged(self, command_line: str, work):
        """``work()`` with its record appended to ``invocations.json`` (also when interrupted: its time
        counts toward the total). Returns ``(result, {"wall_seconds", "units_before", "units_after", "invocations"})``."""
        earlier = self.invocations()  # a damaged log is refused before the work, not after it
        before, t0, finished = self.count_done(), time.perf_counter(), False
        try:
            result = work()
            finished = True
        finally:
            wall, after = time.perf_counter() - t0, self.count_done()
            invocations = self.log_invocation(
                {
                    "command": command_line,
                    "wall_seconds": wall,
                    "finished": finished,
                    "units_before": before,
                    "units_after": after,
                },
                earlier,
            )
        return result, {"wall_seconds": wall, "units_before": before, "units_after": after, "invocations": invocations}

    def invocations(self) -> list[dict]:
        path = self.root.parent / "invocations.json"
        return load_json(path, list[Invocation]) if path.is_file() else []

    def log_invocation(self, record: dict, earlier: list[dict] | None = None) -> list[dict]:
        """Append one command's record to ``invocations.json`` beside ``units/``; returns them all."""
        records = (self.invocations() if earlier is None else earlier) + [record]
        atomic_write_json(self.root.parent / "invocations.json", records)
        return records

    def finish(self, kind: str, config: dict, result: dict) -> dict:
        folder = self.folder(kind, config)
        atomic_write_json(folder / "unit.json", {"kind": kind, "config": config})
        atomic_write_json(folder / "result.json", result)
        return result


def unit_counts(log: dict, total: int) -> dict:
    """``cached_units`` and ``computed_units`` of one invocation of a plan of ``total`` units, from its
    ``logged`` record: computed = units finished during it. A folder may also hold other plans' units
    (a 5-seed run beside a 3-seed one), so the folder's count before the run is not this plan's."""
    computed = min(log["units_after"] - log["units_before"], total)
    return {"cached_units": total - computed, "computed_units": computed}
