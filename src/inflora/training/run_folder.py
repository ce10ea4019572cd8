"""The run folder's guard: one configuration per ``--out``, finished runs returned at once."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict

from ..errors import ConfigError
from ..io import atomic_write_json, output_dir
from ..validate import load_json
from .config import FinetuneConfig


class RunRecord(BaseModel):
    """What the folder guard reads from ``config.json`` / ``metrics.json`` (metrics carry more keys)."""

    model_config = ConfigDict(extra="allow", strict=True)
    config_key: str
    config: dict[str, Any] = {}

# Options that change the numbers but that a user may well mistake for "how", not "what": a resume
# with another value gets its own message instead of "a different configuration".
_NAMED = ("precision",)


def _differs(stored: dict, cfg: FinetuneConfig, out: Path, state: str) -> ConfigError:
    old = stored.get("config", {})
    for name in _NAMED:
        mine = getattr(cfg, name)
        if old.get(name, FinetuneConfig.__dataclass_fields__[name].default) != mine:
            return ConfigError(f"{out} holds {state} run started with --{name} {old.get(name)}, not {mine}; "
                               f"use --{name} {old.get(name)} to resume it, or choose another --out")
    return ConfigError(f"{out} holds {state} run with a different configuration; choose another --out")


def finished_metrics(cfg: FinetuneConfig, out: Path) -> dict | None:
    """The metrics of a finished run of ``cfg`` in ``out``; None if there is none yet."""
    metrics_path = Path(out) / "metrics.json"
    if not metrics_path.exists():
        return None
    done = load_json(metrics_path, RunRecord)
    if done.get("config_key") == cfg.key():
        return done
    raise _differs(done, cfg, out, "a finished")


def claim_run_folder(cfg: FinetuneConfig, out: Path, *, write: bool = True) -> None:
    """Refuse a folder holding another configuration's unfinished run; record ours (``write``:
    on the main process only)."""
    out = Path(out)
    key_file = out / "config.json"
    if key_file.exists():
        stored = load_json(key_file, RunRecord)
        if stored.get("config_key") != cfg.key():
            raise _differs(stored, cfg, out, "an unfinished")
    if write:
        output_dir(out)
        atomic_write_json(key_file, {"config_key": cfg.key(), "config": cfg.to_dict()})
