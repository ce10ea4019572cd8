"""The run folder's guard: one configuration per ``--out``, finished runs returned at once."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from ..errors import ConfigError, DataError
from ..io import atomic_write_json, output_dir
from ..remedies import typed_remedy_options
from ..validate import load_json
from .config import FinetuneConfig, config_key


def _scalar(value: Any) -> Any:
    """A remedy option's stored value: one JSON scalar (its type is checked against the option's)."""
    if value is not None and not isinstance(value, (bool, int, float, str)):
        raise ValueError(f"a remedy option is a number, text, true/false or null, not {type(value).__name__}")
    return value


OptionValue = Annotated[Any, AfterValidator(_scalar)]  # a JSON value of the option's declared type


class StoredConfig(BaseModel):
    """The ``config`` a run folder records: ``FinetuneConfig.to_dict()``. Only what is read back
    beyond the key is checked here; the rest passes (older and newer fields alike)."""

    model_config = ConfigDict(extra="allow", strict=True)
    remedy_options: dict[str, dict[str, OptionValue]] = {}


class RunRecord(BaseModel):
    """What the folder guard reads from ``config.json`` / ``metrics.json`` (metrics carry more keys)."""

    model_config = ConfigDict(extra="allow", strict=True)
    config_key: str
    config: StoredConfig = Field(default_factory=StoredConfig)


# Options that change the numbers but that a user may well mistake for "how", not "what": a resume
# with another value gets its own message instead of "a different configuration".
_NAMED = ("precision",)


def _differs(stored: dict, cfg: FinetuneConfig, out: Path, state: str) -> ConfigError:
    old = stored.get("config", {})
    for name in _NAMED:
        mine = getattr(cfg, name)
        if old.get(name, FinetuneConfig.__dataclass_fields__[name].default) != mine:
            return ConfigError(
                f"{out} holds {state} run started with --{name} {old.get(name)}, not {mine}; "
                f"use --{name} {old.get(name)} to resume it, or choose another --out"
            )
    return ConfigError(f"{out} holds {state} run with a different configuration; choose another --out")


def read_record(path: Path) -> dict:
    """``config.json`` or ``metrics.json``, validated, with its remedy options read back as their
    declared types. A folder written before they were stored typed keeps them as the CLI's text
    (``"0.05"``): read through the option's type, and the record keyed as if written typed, so the
    same run resumes (or returns) as before; text the type cannot read is refused."""
    record = load_json(path, RunRecord)
    config = record.get("config", {})
    try:
        typed = typed_remedy_options(config.get("remedy_options", {}))
    except ConfigError as exc:
        raise DataError(f"{path}: config.remedy_options: {exc}") from None
    if typed != config.get("remedy_options", typed):
        record["config"] = {**config, "remedy_options": typed}
        record["config_key"] = config_key(record["config"])  # the old key hashed the text
    return record


def finished_metrics(cfg: FinetuneConfig, out: Path) -> dict | None:
    """The metrics of a finished run of ``cfg`` in ``out``; None if there is none yet."""
    metrics_path = Path(out) / "metrics.json"
    if not metrics_path.exists():
        return None
    done = read_record(metrics_path)
    if done.get("config_key") == cfg.key():
        return done
    raise _differs(done, cfg, out, "a finished")


def claim_run_folder(cfg: FinetuneConfig, out: Path, *, write: bool = True) -> None:
    """Refuse a folder holding another configuration's unfinished run; record ours (``write``:
    on the main process only)."""
    out = Path(out)
    key_file = out / "config.json"
    if key_file.exists():
        stored = read_record(key_file)
        if stored.get("config_key") != cfg.key():
            raise _differs(stored, cfg, out, "an unfinished")
    if write:
        output_dir(out)
        atomic_write_json(key_file, {"config_key": cfg.key(), "config": cfg.to_dict()})
