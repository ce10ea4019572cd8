"""Checkpoints hold nothing that runs code: state.pt loads with weights_only=True, RNG states
round-trip exactly, and a tampered state.pt is refused before any of it is unpickled."""

import pathlib
import random

import numpy as np
import pytest
import torch

from inflora.errors import ConfigError
from inflora.training.checkpoint import is_complete, load_checkpoint, rng_state, save_checkpoint, set_rng_state


class Payload:
    """Unpickling this would create a file: the marker that code ran on load."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return pathlib.Path.touch, (pathlib.Path(self.marker),)


def parts(seed=0):
    torch.manual_seed(seed)
    model = torch.nn.Linear(4, 3)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 1.0 / (1 + step))
    model(torch.randn(2, 4)).sum().backward()
    opt.step()
    sched.step()
    return model, opt, sched


def draws():
    return torch.rand(3).tolist(), random.random(), float(np.random.rand()), random.gauss(0, 1)


def test_rng_state_is_tensors_and_plain_values_and_round_trips(tmp_path):
    random.gauss(0, 1)  # leaves a cached gaussian in Python's state
    state = rng_state()
    torch.save(state, tmp_path / "rng.pt")
    expected = draws()
    set_rng_state(torch.load(tmp_path / "rng.pt", weights_only=True))
    assert draws() == expected


def test_resume_loads_with_weights_only_and_restores_everything(tmp_path, monkeypatch):
    model, opt, sched = parts()
    save_checkpoint(tmp_path / "last", model, opt, sched, {"epoch": 1})
    assert is_complete(tmp_path / "last")
    expected = draws()
    calls = []
    real_load = torch.load
    monkeypatch.setattr(torch, "load", lambda *a, **k: calls.append(k.get("weights_only")) or real_load(*a, **k))
    fresh, opt2, sched2 = parts(seed=1)
    meta = load_checkpoint(tmp_path / "last", fresh, opt2, sched2)
    assert calls == [True] and meta["epoch"] == 1
    assert torch.equal(fresh.weight, model.weight) and sched2.state_dict() == sched.state_dict()
    assert torch.equal(opt2.state_dict()["state"][0]["exp_avg"], opt.state_dict()["state"][0]["exp_avg"])
    assert draws() == expected


def test_a_tampered_state_is_refused_without_running_it(tmp_path):
    model, opt, sched = parts()
    save_checkpoint(tmp_path / "last", model, opt, sched, {"epoch": 1})
    marker = tmp_path / "code-ran"
    torch.save({"optimizer": Payload(marker)}, tmp_path / "last" / "state.pt")
    with pytest.raises(ConfigError, match="refusing to load") as exc:
        load_checkpoint(tmp_path / "last", model, opt, sched)
    assert "\n" not in str(exc.value) and not marker.exists()
