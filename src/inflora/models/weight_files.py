"""A checkpoint's safetensors files without the model: a folder (``model.safetensors``, or an index
and its shards) or a hub name (its snapshot in the hub cache, downloaded unless the hub is offline).

Everything here is read from files the user gave, so it is validated before use: the index must be a
JSON object whose ``weight_map`` names shards inside the folder, every shard must parse as
safetensors, and the index and the shards' own headers must agree on which tensor lives where.
Only headers are read here; ``checkpoint_tensors`` is the table the weights-only scan walks.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from ..errors import ConfigError, DataError
from .loading import resolve_model_path

SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"
HUB_PATTERNS = ["*.safetensors", INDEX_FILE, "config.json"]


@dataclass(frozen=True)
class TensorRef:
    """Where one tensor lives, and its shape and stored dtype (safetensors' names: F32, BF16, …).
    With ``index``, the one matrix ``tensor[index]`` of a stacked 3-D tensor (fused MoE experts
    [E, a, b]), and ``shape`` is that matrix's."""

    shard: Path
    name: str
    shape: tuple[int, ...]
    dtype: str
    index: int | None = None

    @property
    def numel(self) -> int:
        n = 1
        for d in self.shape:
            n *= d
        return n


def checkpoint_folder(name_or_path: str) -> Path:
    """The folder holding the checkpoint: a local folder as is, a hub name through the hub cache."""
    path = resolve_model_path(name_or_path)
    if os.path.isdir(path):
        return Path(path)
    if os.path.exists(path):
        raise ConfigError(f"{name_or_path!r} is a file; give the checkpoint's folder (or a hub name)")
    return _hub_snapshot(name_or_path)


def _hub_snapshot(name: str) -> Path:
    """Only the safetensors files, the index and the config are fetched (or found in the cache)."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HFValidationError, LocalEntryNotFoundError

    try:
        return Path(snapshot_download(name, allow_patterns=HUB_PATTERNS))
    except HFValidationError:
        raise ConfigError(f"model {name!r} is neither a local folder nor a hub name") from None
    except LocalEntryNotFoundError:
        raise ConfigError(
            f"model {name!r} is not a local folder and not in the hub cache, and the hub "
            "is offline (HF_HUB_OFFLINE=1); download it first or give its folder"
        ) from None
    except OSError as exc:
        raise ConfigError(f"cannot fetch {name!r} from the hub: {str(exc).splitlines()[0]}") from None


def shard_files(folder: Path) -> tuple[list[Path], dict[str, str] | None]:
    """The safetensors files of ``folder`` and, for a sharded checkpoint, its index's weight map."""
    index = folder / INDEX_FILE
    if index.is_file():
        weight_map = _read_index(index)
        names = list(dict.fromkeys(weight_map.values()))
        missing = [n for n in names if not (folder / n).is_file()]
        if missing:
            raise DataError(f"{index} names shard {missing[0]!r}, which is not in {folder}")
        return [folder / n for n in names], weight_map
    if (folder / SINGLE_FILE).is_file():
        return [folder / SINGLE_FILE], None
    raise ConfigError(
        f"no safetensors weights in {folder}: looked for {SINGLE_FILE} and {INDEX_FILE} "
        "(a .bin checkpoint can be converted with save_pretrained(safe_serialization=True))"
    )


def _read_index(index: Path) -> dict[str, str]:
    try:
        data = json.loads(index.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DataError(f"cannot read {index}: {exc}") from None
    weight_map = data.get("weight_map") if isinstance(data, dict) else None
    if not isinstance(weight_map, dict) or not weight_map:
        raise DataError(f"{index} has no weight_map (an object of tensor name -> shard file)")
    for tensor, shard in weight_map.items():
        if not isinstance(shard, str) or Path(shard).name != shard or not shard.endswith(".safetensors"):
            raise DataError(f"{index}: tensor {tensor!r} points at {shard!r}, not a .safetensors file in the folder")
    return weight_map


def shard_tensors(shard: Path) -> list[TensorRef]:
    """The tensors one shard holds, from its header alone (nothing is read into memory)."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(shard), framework="pt") as f:
            return [
                TensorRef(shard, k, tuple(f.get_slice(k).get_shape()), f.get_slice(k).get_dtype()) for k in f.keys()
            ]
    except (SafetensorError, OSError) as exc:
        raise DataError(f"{shard} is not a readable safetensors file: {str(exc).splitlines()[0]}") from None


def checkpoint_tensors(folder: Path) -> list[TensorRef]:
    """Every tensor of the checkpoint in ``folder``; a sharded one must match its index exactly."""
    shards, weight_map = shard_files(folder)
    refs = [ref for shard in shards for ref in shard_tensors(shard)]
    if weight_map is not None:
        found = {ref.name: ref.shard.name for ref in refs}
        for name, shard in weight_map.items():
            if found.get(name) != shard:
                raise DataError(
                    f"{folder / INDEX_FILE} puts {name!r} in {shard}, but that shard's header does not hold it"
                )
        if len(found) != len(refs) or set(found) != set(weight_map):
            extra = sorted(set(found) - set(weight_map)) or ["a tensor name twice"]
            raise DataError(f"the shards of {folder} hold {extra[0]!r}, which the index does not list")
    if not refs:
        raise DataError(f"the safetensors files of {folder} hold no tensors")
    return refs


def read_tensor(ref: TensorRef):
    """One tensor, read on its own. The shard is opened and closed around it: pages read through an
    open shard's memory map stay resident until it closes, so keeping a shard open while reading all
    of its tensors would hold the whole shard. The tensor itself is backed by the file's pages (no
    copy) and freed when the caller drops it."""
    from safetensors import safe_open

    with safe_open(str(ref.shard), framework="pt") as f:
        if ref.index is not None:  # one expert's matrix: only its bytes are read
            return f.get_slice(ref.name)[ref.index]
        return f.get_tensor(ref.name)
