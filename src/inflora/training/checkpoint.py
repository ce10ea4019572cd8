"""Epoch checkpoints written atomically (temp folder + rename), so a killed run loses nothing it finished."""
from __future__ import annotations

import os
import random
import shutil
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from ..io import atomic_write_json, read_json


def trainable_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Only what training changes: the trainable parameters (small for LoRA and head-only runs)."""
    return {n: p.detach().cpu().contiguous().clone() for n, p in model.named_parameters() if p.requires_grad}


def load_trainable_state(model: torch.nn.Module, state: dict[str, torch.Tensor]) -> None:
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name, value in state.items():
            params[name].copy_(value)


def rng_state() -> dict:
    return {"torch": torch.get_rng_state(), "python": random.getstate(), "numpy": np.random.get_state()}


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])


def save_checkpoint(path: Path, model, optimizer, scheduler, meta: dict) -> Path:
    """Write ``path`` as a whole or not at all."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_file(trainable_state(model), str(tmp / "trainable.safetensors"))
    torch.save({"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(), "rng": rng_state()},
               tmp / "state.pt")
    atomic_write_json(tmp / "meta.json", meta)
    old = path.with_name(f".{path.name}.old-{os.getpid()}")
    if path.exists():
        path.rename(old)
    tmp.rename(path)
    shutil.rmtree(old, ignore_errors=True)
    return path


def load_checkpoint(path: Path, model, optimizer=None, scheduler=None) -> dict:
    load_trainable_state(model, load_file(str(Path(path) / "trainable.safetensors")))
    if optimizer is not None:
        state = torch.load(Path(path) / "state.pt", weights_only=False)
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        set_rng_state(state["rng"])
    return read_json(Path(path) / "meta.json")


def is_complete(path: Path) -> bool:
    return all((Path(path) / f).is_file() for f in ("trainable.safetensors", "state.pt", "meta.json"))
