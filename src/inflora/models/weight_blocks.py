"""Blocks from tensor names alone, for the weights-only scan (no model, no architecture row).

A block's tensors are named ``<block list>.<i>.<path in the block>``, as PEFT's ``layers_pattern``
reads them: the block index is the *first* numbered part of the name, so in
``model.layers.3.mlp.experts.5.w1.weight`` the block is 3 and ``mlp.experts.5.w1`` is a matrix type
of that block (an expert index is never taken for a block index). A checkpoint may hold several
numbered lists (a vision tower beside the language model): the one holding the most weight is
scanned and the others are named in the result. A block's matrices are its 2-D ``.weight``
tensors except embeddings, and each expert of a fused 3-D expert tensor (``block_matrix_types``),
keyed by their path, as the in-memory rules read them (``models.stored_matrices``), so both give the
same scores.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, replace
from pathlib import Path

from ..errors import ArchitectureError, DataError
from .weight_files import TensorRef, checkpoint_folder, checkpoint_tensors

FLOAT_DTYPES = ("F64", "F32", "F16", "BF16")


@dataclass(frozen=True)
class BlockLayout:
    """The scanned block list of a checkpoint: per block, matrix type -> where the matrix lives."""

    folder: Path
    block_list: str
    blocks: tuple[dict[str, TensorRef], ...]
    other_lists: dict[str, int]  # numbered lists not scanned -> their number of blocks
    files: int
    bytes: int
    largest: TensorRef  # the largest tensor of the whole checkpoint

    @property
    def num_blocks(self) -> int:
        return len(self.blocks)

    def matrices(self):
        """(block, type, ref) in block order, each block's matrices in file order (shard, then name)."""
        for i, mats in enumerate(self.blocks):
            for t, ref in sorted(mats.items(), key=lambda kv: (str(kv[1].shard), kv[1].name)):
                yield i, t, ref


def split_block_name(name: str) -> tuple[str, int, str] | None:
    """``model.layers.3.mlp.experts.5.w1.weight`` -> (``model.layers``, 3, ``mlp.experts.5.w1.weight``)."""
    parts = name.split(".")
    for i in range(1, len(parts) - 1):
        if parts[i].isdigit():
            return ".".join(parts[:i]), int(parts[i]), ".".join(parts[i + 1 :])
    return None


def block_matrix_types(rest: str, shape: tuple[int, ...]) -> list[tuple[str, int | None]]:
    """The matrix types a tensor of a block holds, by its path in the block and its shape: a 2-D
    ``.weight`` (not an embedding) is one matrix, typed by its path; a 3-D parameter that is not a
    module's ``.weight`` (fused MoE experts, ``mlp.experts.gate_up_proj`` [E, a, b]) is E matrices,
    ``mlp.experts.gate_up_proj[e]``, one per expert. Anything else (norms, biases, convolutions)
    none. The in-memory rules read the same (``models.stored_matrices``)."""
    if "embed" in rest:
        return []
    if len(shape) == 2 and rest.endswith(".weight"):
        return [(rest.removesuffix(".weight"), None)]
    if len(shape) == 3 and not rest.endswith((".weight", ".bias")):
        return [(f"{rest}[{e}]", e) for e in range(shape[0])]
    return []


def numbered_lists(refs: list[TensorRef]) -> dict[str, dict[int, dict[str, TensorRef]]]:
    """Every numbered list in the names: prefix -> block index -> matrix type -> ref."""
    lists: dict[str, dict[int, dict[str, TensorRef]]] = defaultdict(lambda: defaultdict(dict))
    for ref in refs:
        split = split_block_name(ref.name)
        if not split:
            continue
        prefix, index, rest = split
        for type_, expert in block_matrix_types(rest, ref.shape):
            lists[prefix][index][type_] = ref if expert is None else replace(ref, shape=ref.shape[1:], index=expert)
    return lists


def block_layout(refs: list[TensorRef], folder: Path) -> BlockLayout:
    lists = numbered_lists(refs)
    if not lists:
        raise ArchitectureError(
            f"no blocks in the tensor names of {folder}: looked for 2-D weights named <list>.<block "
            f"number>.<path>.weight (e.g. model.layers.0.self_attn.q_proj.weight) among {len(refs)} "
            f"tensors such as {refs[0].name!r}"
        )
    weight = {p: sum(r.numel for blk in b.values() for r in blk.values()) for p, b in lists.items()}
    chosen = max(sorted(lists), key=lambda p: weight[p])
    found = sorted(lists[chosen])
    if found != list(range(len(found))):
        gaps = sorted(set(range(found[-1] + 1)) - set(found))
        raise DataError(
            f"the blocks of {chosen} in {folder} are not numbered 0..{found[-1]}: block {gaps[0]} has no weight matrix"
        )
    _check_float(lists[chosen])
    return BlockLayout(
        folder,
        chosen,
        tuple(dict(lists[chosen][i]) for i in found),
        {p: len(b) for p, b in lists.items() if p != chosen},
        len({r.shard for r in refs}),
        sum(r.shard.stat().st_size for r in {r.shard: r for r in refs}.values()),
        max(refs, key=lambda r: r.numel),
    )


def _check_float(blocks: dict[int, dict[str, TensorRef]]) -> None:
    for mats in blocks.values():
        for ref in mats.values():
            if ref.dtype not in FLOAT_DTYPES:
                raise DataError(
                    f"{ref.name} in {ref.shard.name} is stored as {ref.dtype}; the weight rules "
                    f"read floating-point weights ({', '.join(FLOAT_DTYPES)}): dequantize first"
                )


def checkpoint_layout(name_or_path: str) -> BlockLayout:
    """The blocks of a folder or hub checkpoint, from its safetensors headers (no weights read)."""
    folder = checkpoint_folder(name_or_path)
    return block_layout(checkpoint_tensors(folder), folder)
