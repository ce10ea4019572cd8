"""Resume a long weights-only scan: each finished block's singular values are written atomically to
one ``.npz`` file, and a scan that is started again skips the blocks already there.

A block file is used only when its ``key`` matches (the checkpoint's files with their sizes and
modification times, the block list and the dtypes), so an edited checkpoint or other rules start
afresh. The files are read as untrusted: no pickles, and anything malformed is recomputed.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np

from ..io import atomic_write_bytes


class BlockCache:
    def __init__(self, folder: Path, key: str):
        self.folder = Path(folder)
        self.key = key

    def path(self, block: int) -> Path:
        return self.folder / f"block-{block:05d}.npz"

    def save(
        self, block: int, shapes: dict[str, tuple], values: dict[tuple[str, str], np.ndarray], seconds: float
    ) -> None:
        arrays = {"key": np.array(self.key), "seconds": np.array(seconds), "types": np.array(list(shapes), dtype=str)}
        for i, shape in enumerate(shapes.values()):
            arrays[f"shape{i}"] = np.array(shape, dtype=np.int64)
        for (t, dtype), v in values.items():
            arrays[f"sv{list(shapes).index(t)}_{dtype}"] = v
        buf = io.BytesIO()
        np.savez(buf, **arrays)
        atomic_write_bytes(self.path(block), buf.getvalue())

    def load(self, block: int, dtypes: list[str]):
        """(shapes, values, seconds) of a finished block, or None (absent, other key, or malformed)."""
        path = self.path(block)
        if not path.is_file():
            return None
        try:
            with np.load(path, allow_pickle=False) as z:
                if str(z["key"]) != self.key:
                    return None
                types = [str(t) for t in z["types"]]
                shapes = {t: tuple(int(d) for d in z[f"shape{i}"]) for i, t in enumerate(types)}
                values = {(t, d): _float_vector(z[f"sv{i}_{d}"]) for i, t in enumerate(types) for d in dtypes}
                return shapes, values, float(z["seconds"])
        except (OSError, KeyError, ValueError, TypeError):
            return None


def _float_vector(a: np.ndarray) -> np.ndarray:
    if a.dtype.kind != "f" or a.ndim != 1:
        raise ValueError("not a vector of singular values")
    return a
