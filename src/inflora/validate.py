"""The input boundary: what a user types and what a file says, checked where it enters.

``BOUNDS`` is the one table of usable ranges. The CLI and the library call the same
``check_values``: ``inflora finetune --lr -1`` and ``FinetuneConfig(lr=-1)`` fail with the same
one-line ``ConfigError`` before any model or data is loaded. It is keyed by the parameter name that
the API and the CLI share (``max_length`` is ``--max-length``); the CLI walker test
(tests/test_cli_walker.py) reads it to find out-of-range values for every numeric option, so an
option added later is covered once its bound is written here. ``load_json`` reads a JSON file that
inflora wrote but someone may have changed, against a pydantic schema; ``printable`` puts a user
string on one line before it goes into a comment, heading or table cell of a generated file.
"""

from __future__ import annotations

import math
import unicodedata
from dataclasses import dataclass

from .errors import ConfigError

MIN_LENGTH = 8  # tokens: two special tokens ([CLS]/[SEP] or BOS/EOS) and a few words; below it texts vanish
SEED_MAX = 2**32 - 1  # numpy's and torch's seed range


@dataclass(frozen=True)
class LoraDefaults:
    """The LoRA settings a user gets without asking, written once. Every default reads this: the
    CLI options (``--lora-r`` …), ``FinetuneConfig``, ``StrategyOptions``, ``lora_config`` /
    ``inject_lora``, the compare plan and the memory plan (tests/test_lora_defaults.py checks it).
    It lives beside ``BOUNDS`` (the same inputs' usable ranges) in a module without torch, so the
    CLI can name it in its option declarations. ``targets``: the preset of ``resolve_targets``."""

    r: int = 8
    alpha: int = 16
    dropout: float = 0.1
    targets: str = "qkv"


LORA_DEFAULTS = LoraDefaults()


@dataclass(frozen=True)
class Bound:
    """``low <= value`` (``low < value`` when ``open_low``), ``value < high`` when ``high`` is set."""

    low: float
    why: str
    open_low: bool = False
    high: float | None = None
    integer: bool = True
    open_high: bool = True

    def ok(self, value) -> bool:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return False
        if self.integer and not float(value).is_integer():
            return False
        if not math.isfinite(value):
            return False
        above = value > self.low if self.open_low else value >= self.low
        below = self.high is None or (value < self.high if self.open_high else value <= self.high)
        return above and below

    def describe(self) -> str:
        low = f"greater than {_number(self.low)}" if self.open_low else f"at least {_number(self.low)}"
        high = "" if self.high is None else f" and {'below' if self.open_high else 'at most'} {_number(self.high)}"
        return low + high

    def check(self, value, label: str):
        """``value`` when in range (None: not given); else a one-line ConfigError naming ``label``."""
        if value is None or self.ok(value):
            return value
        whole = "a whole number: " if self.integer else ""
        raise ConfigError(f"{label} must be {self.describe()}, got {value!r} ({whole}{self.why})")

    def outside(self) -> list:
        """Values just outside the range, below it and above it (the CLI walker test's inputs)."""
        step = 1 if self.integer else 0.5
        below = [self.low if self.open_low else self.low - step]
        above = [] if self.high is None else [self.high if self.open_high else self.high + step]
        return below + above


def _number(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else f"{x:g}"


_AT_LEAST_1 = "a count"
BOUNDS: dict[str, Bound] = {
    "lr": Bound(0, "a learning rate", open_low=True, integer=False),
    "lora_dropout": Bound(0, "a dropout probability", high=1, integer=False),
    "max_length": Bound(MIN_LENGTH, "room for the special tokens and some text"),
    "seed": Bound(0, "a random seed", high=SEED_MAX + 1),
    "batch_size": Bound(1, _AT_LEAST_1),
    "diagnose_batch_size": Bound(1, _AT_LEAST_1),
    "batches": Bound(1, _AT_LEAST_1),
    "epochs": Bound(1, _AT_LEAST_1),
    "resamples": Bound(0, "bootstrap resamples (0: no stability estimate)"),
    "k": Bound(1, _AT_LEAST_1),
    "lisa_interval": Bound(1, "steps"),
    "grad_accum": Bound(1, _AT_LEAST_1),
    "log_every": Bound(1, "steps"),
    "lora_r": Bound(1, "a LoRA rank"),
    "lora_alpha": Bound(1, "a LoRA scale"),
    "limit_train": Bound(1, "examples"),
    "limit_eval": Bound(1, "examples"),
    "head_warmup": Bound(0, "steps (0: off)"),
    "entropy_queries": Bound(1, "query positions"),
    "warmup_ratio": Bound(0, "a share of the training steps", high=1, integer=False),
    # rule parameters (--param key=value)
    "alpha": Bound(0, "SKI's mix of the entropy and gradient terms", high=1, open_high=False, integer=False),
    "tau": Bound(0, "a threshold on the normalised SKI; above 1 it selects nothing", integer=False),
    "top": Bound(1, "peaks"),
    "widen": Bound(0, "blocks either side of a peak"),
    # inflora plan
    "length": Bound(1, "tokens per sequence"),
    "steps": Bound(1, "optimizer steps"),
    "measure_steps": Bound(1, "steps"),
    "threads": Bound(0, "torch threads (0: torch's default)"),
}


def flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def check_value(name: str, value, label: str | None = None):
    """``value`` if it lies in ``BOUNDS[name]`` (None: not given, always fine); else a ConfigError
    naming ``label`` (default: the CLI flag)."""
    return BOUNDS[name].check(value, label or flag(name))


def check_like(name: str, value, default, label: str):
    """A keyword value of the same kind as its ``default`` (a bool for a bool, a number for a number,
    text for text), in range when ``name`` has a bound."""
    kinds = {bool: (bool,), int: (int,), float: (int, float), str: (str,)}.get(type(default))
    if kinds and (not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds)):
        raise ConfigError(f"{label} must be {type(default).__name__} like its default {default!r}, got {value!r}")
    if name in BOUNDS:
        check_value(name, value, label)
    return value


def check_values(**values) -> None:
    """``check_value`` for each keyword whose name has a bound (others are left to their owners)."""
    for name, value in values.items():
        if name in BOUNDS:
            check_value(name, value)


def check_seeds(seeds) -> list[int]:
    for seed in seeds:
        check_value("seed", seed)
    return list(seeds)


def printable(text: object, limit: int = 200) -> str:
    """``text`` on one line without control characters: safe inside a comment, a table cell or a
    log line of any file another program reads (a newline there would start a line of code)."""
    flat = "".join(ch if unicodedata.category(ch)[0] != "C" else " " for ch in str(text))
    flat = " ".join(flat.split())
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


def _field(loc: tuple) -> str:
    return ".".join(printable(part, 60) for part in loc) or "(top level)"


def load_json(path, schema=None):
    """The JSON in ``path``, checked against ``schema`` (a pydantic model or type; None: any JSON).
    Files are untrusted: a missing, non-UTF-8, malformed or ill-shaped file is one DataError
    ``<file>: <field>: <why>``. Returns the plain JSON data (the schema checks, it does not convert)."""
    import json
    from pathlib import Path

    from .errors import DataError

    path = Path(path)
    try:
        text = path.read_bytes().decode("utf-8")
    except FileNotFoundError:
        raise DataError(f"{path}: does not exist") from None
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: byte {exc.start}: not UTF-8 text") from None
    except OSError as exc:
        raise DataError(f"{path}: cannot read: {exc.strerror or exc}") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}: line {exc.lineno} column {exc.colno}: not JSON ({exc.msg})") from None
    except RecursionError:
        raise DataError(f"{path}: (top level): nested too deeply") from None
    if schema is not None:
        check_schema(path, data, schema)
    return data


def check_schema(path, data, schema) -> None:
    from pydantic import TypeAdapter, ValidationError

    from .errors import DataError

    try:
        TypeAdapter(schema).validate_python(data, strict=True)
    except ValidationError as exc:
        first = exc.errors(include_url=False)[0]
        raise DataError(f"{path}: {_field(first['loc'])}: {printable(first['msg'])}") from None
    except RecursionError:
        raise DataError(f"{path}: (top level): nested too deeply") from None


def parse_blocks(text: str | None, flag: str = "--layers") -> list[int] | None:
    """``"2,3"`` -> [2, 3] (sorted, unique; None when empty): the block lists of ``--layers``,
    ``--blocks``; a bad item is a one-line error naming ``flag``."""
    if not text:
        return None
    try:
        blocks = sorted({int(x) for x in text.split(",") if x.strip()})
    except ValueError:
        raise ConfigError(f"{flag} expects block indices separated by commas, like 0,1,4; got {text!r}") from None
    if blocks and blocks[0] < 0:
        raise ConfigError(f"{flag} expects block indices of at least 0; got {text!r}")
    return blocks
