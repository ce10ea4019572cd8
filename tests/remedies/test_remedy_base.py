"""The remedy contract: registry names, option tables, no-op hooks, option parsing errors."""

import pytest
import torch
from torch import nn

from inflora.errors import ConfigError
from inflora.remedies import REMEDIES, Option, Remedy, build_remedy

NAMES = ["dal", "grokfast", "nm-sparsity", "redo", "spam", "spectral-decoupling"]


def test_registry_names_and_option_tables():
    assert REMEDIES.names() == NAMES
    for name in NAMES:
        cls = REMEDIES.get(name)
        assert issubclass(cls, Remedy) and cls.name == name
        for opt_name, opt in cls.options.items():
            assert isinstance(opt, Option) and len(opt[:3]) == 3 and opt.help
            assert opt_name == opt_name.lower() and "-" not in opt_name
        rem = cls.from_options()  # every default is valid
        assert isinstance(rem.metrics(), dict)
    with pytest.raises(ConfigError, match="unknown remedy"):
        REMEDIES.get("dropout")


def test_base_hooks_are_no_ops():
    rem, model = Remedy(), nn.Linear(2, 2)
    loss = torch.tensor(1.0)
    assert rem.wrap_model(model) is model and rem.loss(None, None, loss) is loss
    assert rem.after_backward(model, 0) is None and rem.after_step(model, None, 0, {}) is None
    assert rem.metrics() == {}


def test_option_parsing():
    rem = build_remedy("redo", **{"redo-tau": "0.1", "redo_every": "50"})
    assert rem.tau == 0.1 and rem.every == 50
    nm = build_remedy("nm-sparsity", nm="2:4", nm_recipe="sr-ste", nm_layers="0,2")
    assert (nm.n, nm.m, nm.recipe, nm.layers) == (2, 4, "sr-ste", [0, 2])
    with pytest.raises(ConfigError, match="no option"):
        build_remedy("grokfast", grokfast_speed=2)
    with pytest.raises(ConfigError, match="cannot read"):
        build_remedy("redo", redo_every="often")
    with pytest.raises(ConfigError):
        build_remedy("grokfast", grokfast_mode="median")


def test_typed_options_read_text_and_numbers_as_the_declared_type():
    redo = REMEDIES.get("redo")
    typed = redo.typed_options(**{"redo-tau": "0.1", "redo_every": "50", "redo_end": 7.0, "redo_init": "xavier"})
    assert typed == {"redo_tau": 0.1, "redo_every": 50, "redo_end": 7, "redo_init": "xavier"}
    assert [type(typed[k]) for k in ("redo_tau", "redo_every", "redo_end")] == [float, int, int]
    assert redo.typed_options(redo_tau=1) == {"redo_tau": 1.0} and redo.typed_options(redo_end=None) == {
        "redo_end": None
    }
    for bad in ({"redo_every": 2.5}, {"redo_every": True}, {"redo_tau": False}, {"redo_tau": [0.1]}):
        with pytest.raises(ConfigError, match="cannot read"):
            redo.typed_options(**bad)  # int(2.5) == 2 and float(True) == 1.0 would pass silently
    with pytest.raises(ConfigError, match="--redo-every must be at least 1"):
        redo.typed_options(redo_every="0")


def test_typed_remedy_options_use_registered_names():
    from inflora.remedies import options_by_remedy, typed_remedy_options

    assert typed_remedy_options({"spectral-decoupling": {"sd-lambda": "0.05"}}) == {
        "spectral-decoupling": {"sd_lambda": 0.05}
    }
    assert options_by_remedy(["redo"], {"redo_tau": "0.1", "sd_lambda": None}) == {"redo": {"redo_tau": 0.1}}
    with pytest.raises(ConfigError, match="unknown remedy"):
        typed_remedy_options({"magic": {}})
    with pytest.raises(ConfigError, match="must map a remedy to its options"):
        typed_remedy_options({"redo": "redo_tau=0.1"})


def test_bool_options_parse_text():
    from inflora.remedies.base import _parse_bool

    assert _parse_bool("x", "yes") is True and _parse_bool("x", "0") is False
    with pytest.raises(ConfigError):
        _parse_bool("x", "maybe")
