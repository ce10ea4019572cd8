"""The remedy contract the training loop calls, plus option parsing shared by the CLI.

A remedy touches training at five points (all no-ops here): ``wrap_model`` once before the
optimizer is built, ``loss`` on every forward, ``after_backward`` between backward and the optimizer
step, ``after_step`` after each optimizer step, and ``metrics`` when the trainer logs. Keeping the
hooks tiny lets one trainer run every remedy without knowing any of them.

``step`` is always the 0-based index of the current optimizer step: ``after_backward(model, 0)``
runs before the first ``optimizer.step()`` and ``after_step(model, opt, 0, batch)`` right after it.
Under gradient accumulation call ``after_backward`` once, after the last micro-batch.
"""

from __future__ import annotations

from typing import Any, NamedTuple

from ..errors import ConfigError
from ..validate import Bound


class Option(NamedTuple):
    """One CLI option: ``(type, default, help)`` plus the constructor argument it feeds and, for a
    number, its usable range (``validate.Bound``; None: any value of the type)."""

    type: Any
    default: Any
    help: str
    arg: str
    bound: Bound | None = None


def _parse_bool(name: str, value: str) -> bool:
    v = value.strip().lower()
    if v in ("1", "true", "yes", "on"):
        return True
    if v in ("0", "false", "no", "off"):
        return False
    raise ConfigError(f"--{name.replace('_', '-')}: expected true/false, got {value!r}")


def read_option(name: str, opt: Option, value):
    """``value`` as ``opt.type`` (None: not given), in ``opt.bound``. A number is not read as a bool
    nor a fraction as a whole number, even where Python's constructor would (``int(2.5) == 2``)."""
    flag = "--" + name.replace("_", "-")
    if value is None or opt.type is None:
        return value
    if opt.type is bool and isinstance(value, str):
        value = _parse_bool(name, value)
    elif not isinstance(value, opt.type) or isinstance(value, bool) is not (opt.type is bool):
        bad = isinstance(value, bool) or (opt.type is int and isinstance(value, float) and not value.is_integer())
        try:
            read = None if bad else opt.type(value)
        except (TypeError, ValueError):
            bad = True
        if bad:
            raise ConfigError(f"{flag}: cannot read {value!r} as {opt.type.__name__}") from None
        value = read
    if opt.bound is not None:
        opt.bound.check(value, flag)
    return value


class Remedy:
    """Base class: every hook is a no-op, so a subclass overrides only what it needs."""

    name: str = "none"
    #: option name (``sd_lambda`` -> flag ``--sd-lambda``) -> Option(type, default, help, arg)
    options: dict[str, Option] = {}

    def wrap_model(self, model):
        return model

    def loss(self, logits, labels, loss):
        return loss

    def after_backward(self, model, step: int) -> None:
        return None

    def after_step(self, model, optimizer, step: int, batch) -> None:
        return None

    def metrics(self) -> dict[str, float]:
        return {}

    def make_optimizer(self, params, lr: float = 1e-3, weight_decay: float = 0.0):
        """The optimizer this remedy needs (SPAM brings its own), or None: the trainer's optimizer."""
        return None

    @classmethod
    def typed_options(cls, **kw) -> dict[str, Any]:
        """Option name -> its value as the declared type, in range: what a config, a run folder and
        metrics.json keep (``0.05``, not the text ``"0.05"`` typed at the CLI), so the CLI and the
        API name a run alike. Accepts ``sd_lambda`` or ``sd-lambda`` and text for any type; unknown
        keys and unreadable or out-of-range values raise ConfigError."""
        typed = {}
        for key, value in kw.items():
            name = key.replace("-", "_").lstrip("_")
            if name not in cls.options:
                known = ", ".join("--" + k.replace("_", "-") for k in cls.options) or "none"
                raise ConfigError(f"remedy {cls.name!r} has no option {key!r}; options: {known}")
            typed[name] = read_option(name, cls.options[name], value)
        return typed

    @classmethod
    def from_options(cls, **kw):
        """Build from CLI-style options (see ``typed_options``); an option not given takes its default."""
        args = {cls.options[name].arg: value for name, value in cls.typed_options(**kw).items()}
        for opt in cls.options.values():
            args.setdefault(opt.arg, opt.default)
        return cls(**args)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name})"
