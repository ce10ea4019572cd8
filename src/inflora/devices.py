"""The one device decision: where a run computes, in which precision, and how many processes share it.

Every entry point (``diagnose``, ``finetune``, ``experiment``, ``demo``, the Python API) calls
``resolve_device`` with the user's ``device`` and ``precision`` strings and gets a ``DeviceChoice``
or a one-line ``ConfigError``. Placement, autocast, the fp16 gradient scaler, gradient accumulation
and DDP are then done by Hugging Face accelerate (``make_accelerator``), never by hand.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import os
import re
from dataclasses import dataclass

import torch

from .errors import ConfigError

DEVICES = ("auto", "cpu", "cuda", "cuda:N", "mps")
PRECISIONS = {"fp32": "no", "bf16": "bf16", "fp16": "fp16"}  # ours -> accelerate's mixed_precision
AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass(frozen=True)
class DeviceChoice:
    device: str  # "cpu", "cuda", "cuda:1", "mps": what this process computes on
    precision: str  # fp32 | bf16 | fp16
    world_size: int = 1  # processes launched together (torchrun / accelerate launch)

    @property
    def type(self) -> str:
        return self.device.split(":")[0]

    def to_dict(self) -> dict:
        return {"device": self.device, "precision": self.precision, "world_size": self.world_size}


def launched_world_size() -> int:
    """How many processes torchrun / accelerate launch started (1 when run directly)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size()
    return int(os.environ.get("WORLD_SIZE", "1"))


def is_main_process() -> bool:
    """Rank 0 (or the only process): under torchrun / accelerate launch only it writes and prints."""
    return int(os.environ.get("RANK", "0")) == 0


def _check_device(device: str) -> str:
    if device == "auto":
        if torch.cuda.is_available():
            return "cuda"
        return "mps" if _mps_available() else "cpu"
    if device == "cpu":
        return device
    m = re.fullmatch(r"cuda(?::(\d+))?", device)
    if m:
        if not torch.cuda.is_available():
            build = (
                "a CPU-only build"
                if torch.version.cuda is None
                else f"CUDA {torch.version.cuda}, but no GPU is visible"
            )
            raise ConfigError(
                f"--device {device}: no CUDA GPU is available (torch {torch.__version__}, {build}); "
                "use --device cpu or auto"
            )
        if m.group(1) is not None and int(m.group(1)) >= torch.cuda.device_count():
            raise ConfigError(
                f"--device {device}: only {torch.cuda.device_count()} CUDA device(s) are visible "
                f"(cuda:0 … cuda:{torch.cuda.device_count() - 1})"
            )
        return device
    if device == "mps":
        if not _mps_available():
            raise ConfigError(
                "--device mps: Apple's Metal backend (MPS) is not available here; use --device cpu or auto"
            )
        return device
    raise ConfigError(f"unknown device {device!r}; choose one of: {', '.join(DEVICES)}")


def _mps_available() -> bool:
    return bool(getattr(torch.backends, "mps", None) and torch.backends.mps.is_available())


def check_precision(precision: str, device_type: str) -> None:
    """``precision`` must be known and usable on ``device_type`` (fp16 is refused on a CPU)."""
    if precision not in PRECISIONS:
        raise ConfigError(f"unknown precision {precision!r}; choose one of: {', '.join(PRECISIONS)}")
    if precision == "fp16" and device_type == "cpu":
        raise ConfigError("--precision fp16 needs a GPU (its gradient scaler is CUDA-only); on a CPU use bf16 or fp32")
    if precision == "bf16" and device_type == "cuda" and not torch.cuda.is_bf16_supported():
        raise ConfigError("--precision bf16: this GPU does not support bfloat16; use fp16 or fp32")


def resolve_device(device: str = "auto", precision: str = "fp32") -> DeviceChoice:
    """Validate ``device`` (auto|cpu|cuda|cuda:N|mps) and ``precision`` (fp32|bf16|fp16) for this
    machine. ``auto`` is cuda if available, else mps, else cpu. Under several processes each rank
    uses its local GPU, so an explicit ``cuda:N`` is refused there."""
    device = str(device).strip().lower()
    chosen = _check_device(device)
    check_precision(str(precision), chosen.split(":")[0])
    world = launched_world_size()
    if world > 1 and ":" in chosen:
        raise ConfigError(
            f"--device {device} under {world} processes: each process uses its local GPU "
            "(LOCAL_RANK); pass --device cuda"
        )
    return DeviceChoice(chosen, str(precision), world)


def init_processes(device: str = "cpu"):
    """Join the process group torchrun / accelerate launch set up (gloo on CPU, NCCL on GPUs) through
    accelerate's ``PartialState``, which also pins each rank to its local GPU; returns that state."""
    from accelerate import PartialState

    return PartialState(cpu=str(device).split(":")[0] == "cpu")


def autocast(device_type: str, precision: str):
    """torch's autocast context for ``precision`` (a no-op for fp32): the same autocast accelerate applies
    to a prepared model, for code paths that run outside a training loop (the diagnosis probe)."""
    import contextlib

    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device_type, dtype=AUTOCAST_DTYPES[precision])


def is_fsdp(model) -> bool:
    """Whether ``model``'s parameters are FSDP2 shards (``DTensor``s)."""
    if not torch.distributed.is_available():
        return False
    from torch.distributed.tensor import DTensor

    return any(isinstance(p, DTensor) for p in model.parameters())


def make_accelerator(choice: DeviceChoice, grad_accum: int = 1):
    """The ``accelerate.Accelerator`` for ``choice``: device placement, autocast (+ fp16 scaler),
    gradient accumulation, and DDP when launched with torchrun / accelerate launch."""
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState

    if grad_accum < 1:
        raise ConfigError(f"--grad-accum must be at least 1, got {grad_accum}")
    if choice.type == "cuda" and ":" in choice.device:
        torch.cuda.set_device(int(choice.device.split(":")[1]))
    # accelerate keeps one process-wide state; a second run in this process may use another precision
    AcceleratorState._reset_state()
    return Accelerator(
        cpu=choice.type == "cpu",
        mixed_precision=PRECISIONS[choice.precision],
        gradient_accumulation_steps=grad_accum,
        step_scheduler_with_optimizer=False,
    )


__all__ = [
    "DEVICES",
    "PRECISIONS",
    "DeviceChoice",
    "autocast",
    "check_precision",
    "init_processes",
    "is_fsdp",
    "launched_world_size",
    "make_accelerator",
    "resolve_device",
]


@functools.cache
def _malloc_trim():
    """glibc's ``malloc_trim``, or None under another C library."""
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim
    except (OSError, AttributeError):
        return None


def return_freed_memory() -> None:
    """Give the pages of freed CPU buffers back to the system (glibc; nothing elsewhere). After the
    first large buffers are freed, glibc raises its mmap threshold (up to 32 MiB) and serves later
    1-32 MiB tensors from its heap, which small live blocks between them keep from shrinking: the
    process goes on holding freed tensors. A few ms per call."""
    trim = _malloc_trim()
    if trim is not None:
        trim(0)
