"""Epoch checkpoints written atomically (temp folder + rename), so a killed run loses nothing it finished.

Nothing in a checkpoint can run code when loaded: weights are safetensors, metadata is JSON, and
``state.pt`` (optimizer, scheduler, RNG) holds only tensors and plain Python values, loaded with
``torch.load(..., weights_only=True)``. A ``state.pt`` that needs more (a pickled object, e.g. a
tampered run folder) is refused with a one-line error rather than unpickled.
"""

from __future__ import annotations

import copy
import os
import pickle
import random
import shutil
from pathlib import Path
from typing import Annotated, Any, Callable, Optional

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field
from safetensors.torch import load_file, save_file

from ..errors import ConfigError
from ..io import atomic_write_json
from ..validate import load_json


class CheckpointMeta(BaseModel):
    """``meta.json``: the loop's ``TrainState`` (checked before a resume trusts it)."""

    # extra keys pass (TrainState.from_dict ignores them), so a field added to TrainState needs no change here
    model_config = ConfigDict(extra="allow", strict=True)
    epoch: Annotated[int, Field(ge=0)]
    history: list[dict[str, Any]] = []
    best_epoch: Optional[int] = None
    best_acc: Optional[float] = -1.0
    grad_profile: list[Any] = []
    train_seconds: Optional[float] = 0.0
    steps: Annotated[int, Field(ge=0)] = 0
    remedy_metrics: list[Any] = []
    step_losses: list[Optional[float]] = []
    world_size: Annotated[int, Field(ge=1)] = 1
    precision: str = "fp32"


def trainable_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Only what training changes: the trainable parameters (small for LoRA and head-only runs)."""
    return {n: p.detach().cpu().contiguous().clone() for n, p in model.named_parameters() if p.requires_grad}


def load_trainable_state(model: torch.nn.Module, state: dict[str, torch.Tensor]) -> None:
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name, value in state.items():
            params[name].copy_(value)


def rng_state() -> dict:
    """Every RNG the run draws from, as tensors and JSON values only (so ``weights_only`` loads it):
    torch CPU, each CUDA device (empty list without CUDA), Python's ``random`` and NumPy's global RNG."""
    version, words, gauss_next = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "python": {"version": version, "state": torch.tensor(words, dtype=torch.int64), "gauss_next": gauss_next},
        "numpy": {
            "kind": kind,
            "keys": torch.from_numpy(keys.astype(np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached),
        },
    }


def set_rng_state(state: dict) -> None:
    """Restore what ``rng_state()`` returned (CUDA states only where CUDA is available)."""
    torch.set_rng_state(state["torch"])
    if state.get("cuda") and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    py = state["python"]
    random.setstate((py["version"], tuple(int(v) for v in py["state"].tolist()), py["gauss_next"]))
    n = state["numpy"]
    np.random.set_state(
        (n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached_gaussian"])
    )


def load_state(path: Path) -> dict:
    """``torch.load`` with ``weights_only=True``; a file that needs arbitrary unpickling is refused."""
    try:
        return torch.load(Path(path), weights_only=True, map_location="cpu")
    except pickle.UnpicklingError as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ConfigError(
            f"refusing to load {path}: it holds more than tensors and plain values "
            f"({reason[:120]}); delete the checkpoint folder to start over"
        ) from None


def _no_barrier() -> None:
    return None


def rank_rng_file(rank: int) -> str:
    """Rank 0's RNG state lives in state.pt; every other rank's in its own file."""
    return f"rng-rank{rank}.pt"


def save_checkpoint(
    path: Path,
    model,
    optimizer,
    scheduler,
    meta: dict,
    *,
    rank: int = 0,
    world: int = 1,
    barrier: Callable[[], None] = _no_barrier,
) -> Path:
    """Write ``path`` as a whole or not at all. Under several processes rank 0 writes the (identical)
    weights and optimizer state, and every rank its own RNG state, into one temporary folder that
    rank 0 renames once all are written: a resumed run continues every rank's random stream."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    if rank == 0:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        save_file(trainable_state(model), str(tmp / "trainable.safetensors"))
        torch.save(
            {"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(), "rng": rng_state()},
            tmp / "state.pt",
        )
    barrier()
    if rank != 0:
        torch.save(rng_state(), tmp / rank_rng_file(rank))
    barrier()
    if rank == 0:
        atomic_write_json(tmp / "meta.json", {**meta, "world_size": world})
        old = path.with_name(f".{path.name}.old-{os.getpid()}")
        if path.exists():
            path.rename(old)
        tmp.rename(path)
        shutil.rmtree(old, ignore_errors=True)
    barrier()
    return path


def load_checkpoint(path: Path, model, optimizer=None, scheduler=None, *, rank: int = 0, world: int = 1) -> dict:
    """Restore weights, optimizer, scheduler and this rank's RNG. A checkpoint written by another
    number of processes is refused: its data order and random streams would not continue."""
    path = Path(path)
    meta = load_json(path / "meta.json", CheckpointMeta)
    saved_world = int(meta.get("world_size", 1))
    if saved_world != world:
        raise ConfigError(
            f"{path.parent.parent} was started with {saved_world} process(es) and this run has {world}; "
            f"resume it with {saved_world} or choose another --out"
        )
    load_trainable_state(model, load_file(str(path / "trainable.safetensors")))
    if optimizer is not None:
        state = load_state(path / "state.pt")
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        set_rng_state(state["rng"] if rank == 0 else load_state(path / rank_rng_file(rank)))
    return meta


def is_complete(path: Path) -> bool:
    return all((Path(path) / f).is_file() for f in ("trainable.safetensors", "state.pt", "meta.json"))


def save_final_model(model, tokenizer, path: Path) -> Path:
    """A plain transformers folder (LoRA merged) that ``--init`` and ``load_model`` accept."""
    if hasattr(model, "merge_and_unload"):  # merge a copy: training may go on with the adapters
        model = copy.deepcopy(model).merge_and_unload()
    tmp = path.with_name(f".{path.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    shutil.rmtree(path, ignore_errors=True)
    tmp.rename(path)
    return path
