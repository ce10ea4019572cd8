"""Singular values of the block matrices, computed once per matrix and dtype and shared by every
weight rule (``spectrum-snr`` and ``alpha-hts`` read the same float32 spectrum).

Two sources fill the same table: the blocks of a model in memory (computed when a rule first asks),
or a stream of ``(block, type, tensor)`` read from a checkpoint one tensor at a time
(``scan_spectra``), which keeps only the singular values, so memory holds one tensor and its SVD
workspace whatever the checkpoint's size. Both go through ``singular_values``, so a scanned
checkpoint and the same model in memory give identical scores.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable

import numpy as np
import torch

from ..devices import return_freed_memory
from .spectra_cache import BlockCache


def singular_values(w: torch.Tensor, dtype: str) -> np.ndarray:
    """σ of one weight matrix in ``dtype``, descending. The SVD runs on the matrix's tall orientation
    (σ(W) = σ(Wᵀ)): LAPACK reduces a tall matrix by QR first, and torch's SVD of a row-major wide
    matrix measured 3-5× slower than of its transpose (benchmarks/weights_scan.py). The values are
    copied into an array of numpy's own, so no block of torch's allocator stays alive between the
    large buffers each SVD frees (such blocks keep glibc's heap from shrinking)."""
    x = w.detach().to("cpu", getattr(torch, dtype))
    if x.shape[0] < x.shape[1]:
        x = x.T
    return torch.linalg.svdvals(x).numpy().copy()


class Spectra:
    """Per block: matrix type -> its shape and its singular values per dtype, plus the seconds each
    block took to read and decompose (the scan's time per block)."""

    def __init__(self, num_blocks: int):
        self.num_blocks = num_blocks
        self.shapes: list[dict[str, tuple[int, int]]] = [{} for _ in range(num_blocks)]
        self.block_seconds = [0.0] * num_blocks
        self.resumed: list[int] = []  # blocks taken from an earlier run's cache
        self._values: dict[tuple[int, str, str], np.ndarray] = {}
        self._fetch: Callable[[int], dict[str, torch.Tensor]] | None = None
        self._held: tuple[int, dict[str, torch.Tensor]] | None = None  # the one block fetched last

    @classmethod
    def of_matrices(cls, matrices: list[dict[str, torch.Tensor]]) -> Spectra:
        """Lazily, from matrices in memory (``block_matrices``): nothing is computed until asked."""
        return cls.of_blocks(len(matrices), matrices.__getitem__)

    @classmethod
    def of_blocks(cls, num_blocks: int, fetch: Callable[[int], dict[str, torch.Tensor]]) -> Spectra:
        """Lazily, from ``fetch(block)`` -> that block's matrices, asked for when a rule first reads
        the block and held until it reads another (a fetch may build copies, e.g. fused experts
        split as a checkpoint stores them, so only one block's copies live at a time)."""
        spectra = cls(num_blocks)
        spectra._fetch = fetch
        return spectra

    def _matrices(self, block: int) -> dict[str, torch.Tensor]:
        if self._fetch is None:
            return {}
        if self._held is None or self._held[0] != block:
            self._held = None
            mats = self._fetch(block)
            self.shapes[block] = {t: tuple(w.shape) for t, w in mats.items()}
            self._held = (block, mats)
        return self._held[1]

    def types(self, block: int) -> list[str]:
        if not self.shapes[block]:
            self._matrices(block)
        return list(self.shapes[block])

    def values(self, block: int, type_: str, dtype: str) -> np.ndarray:
        key = (block, type_, dtype)
        if key not in self._values:
            w = self._matrices(block).get(type_)
            if w is None:
                raise KeyError(f"block {block} {type_}: no {dtype} spectrum was scanned")
            t0 = time.perf_counter()
            self._values[key] = singular_values(w, dtype)
            self.block_seconds[block] += time.perf_counter() - t0
        return self._values[key]

    def add(self, block: int, type_: str, w: torch.Tensor, dtypes: Iterable[str]) -> None:
        self.shapes[block][type_] = tuple(w.shape)
        for dtype in dtypes:
            self._values[(block, type_, dtype)] = singular_values(w, dtype)

    def restore(self, cache: BlockCache, dtypes: list[str]) -> set[int]:
        """Blocks a previous run of the same scan finished (``spectra_cache``)."""
        done = set()
        for block in range(self.num_blocks):
            found = cache.load(block, dtypes)
            if found:
                self.shapes[block], values, self.block_seconds[block] = found
                self._values.update({(block, t, d): v for (t, d), v in values.items()})
                done.add(block)
        return done

    def save_block(self, cache: BlockCache, block: int) -> None:
        values = {(t, d): v for (b, t, d), v in self._values.items() if b == block}
        cache.save(block, self.shapes[block], values, self.block_seconds[block])


def scan_spectra(
    items: Iterable[tuple[int, str, object]],
    num_blocks: int,
    dtypes: list[str],
    read=lambda x: x,
    total: int | None = None,
    progress: bool = False,
    cache: BlockCache | None = None,
) -> Spectra:
    """Singular values of every streamed matrix in each of ``dtypes``; ``read(item)`` turns an item's
    handle into its tensor (reading it from disk), and the tensor is dropped, its pages given back
    (``return_freed_memory``), before the next one is read: without that, glibc kept the freed
    17 MB buffers of a 2 GB scan in its heap, up to 600 MiB in some runs (none in others). A
    block's seconds count its reads and its SVDs. Items must come block by block; with a
    ``cache``, each finished block is saved and blocks finished by an earlier run are not read."""
    from tqdm.auto import tqdm

    spectra = Spectra(num_blocks)
    done = spectra.restore(cache, dtypes) if cache else set()
    spectra.resumed = sorted(done)
    current = None
    for block, type_, handle in tqdm(items, total=total, desc="scan", unit="matrix", disable=not progress, delay=2.0):
        if block in done:
            continue
        if cache and current is not None and block != current:
            spectra.save_block(cache, current)
        current = block
        t0 = time.perf_counter()
        w = read(handle)
        spectra.add(block, type_, w, dtypes)
        del w
        return_freed_memory()
        spectra.block_seconds[block] += time.perf_counter() - t0
    if cache and current is not None:
        spectra.save_block(cache, current)
    return spectra
