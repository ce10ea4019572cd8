"""The feed-forward half of discovery: a dense FFN (gated, fused gate/up or plain) or an MoE block.

Roles come from shapes, not names: outside the attention module, the projections reading the
block's width are the FFN inputs and the last one writing it back is ``down``; a single input
twice as wide as ``down``'s input is a fused gate/up. The MoE part (router, experts, shared
experts) comes from ``discovery_moe.discover_moe``, the one MoE discovery.
"""

from __future__ import annotations

from torch import nn

from ..errors import ArchitectureError
from .projections import HOW_TO_OVERRIDE, io_features, is_attention_class, projections
from .discovery_moe import discover_moe


def _under(path: str, roots) -> bool:
    return any(r and (path == r or path.startswith(r + ".")) for r in roots)


def _parent(path: str) -> str:
    return path.rpartition(".")[0]


def _down_and_inputs(projs, downs, hidden: int, siblings: bool):
    """The last projection writing ``hidden`` that has inputs (reading ``hidden`` into its width,
    or twice it for a fused gate/up) before it, with those inputs; ``siblings``: only inputs in
    the same module (Falcon-H1's mamba mixer writes after its MLP, with the same width)."""
    for d in reversed(downs):
        down_path, down = projs[d]
        width = io_features(down)[0]
        inputs = [
            (p, m)
            for p, m in projs[:d]
            if io_features(m)[0] == hidden
            and io_features(m)[1] in (width, 2 * width)
            and (not siblings or _parent(p) == _parent(down_path))
        ]
        if inputs:
            return (down_path, down), inputs
    return None


def dense_ffn(block: nn.Module, hidden: int, exclude: list[str], within: str | None = None) -> dict:
    """ffn_gate/ffn_up/ffn_down (paths relative to ``block``) from the projections outside
    ``exclude`` (attention, MoE), or only those under ``within`` (shared experts)."""
    projs = [
        (p, m) for p, m in projections(block) if not _under(p, exclude) and (within is None or _under(p, [within]))
    ]
    downs = [i for i, (_, m) in enumerate(projs) if io_features(m)[1] == hidden]
    if not downs:
        raise ArchitectureError(
            f"{type(block).__name__}: found no feed-forward output projection (a Linear "
            f"outside the attention writing {hidden} features); to support it, {HOW_TO_OVERRIDE}"
        )
    found = _down_and_inputs(projs, downs, hidden, siblings=True) or _down_and_inputs(
        projs, downs, hidden, siblings=False
    )
    if found is None:
        width = io_features(projs[downs[-1]][1])[0]
        raise ArchitectureError(
            f"{type(block).__name__}: found no feed-forward input projection (a Linear reading "
            f"{hidden} features into {width} units); to support it, {HOW_TO_OVERRIDE}"
        )
    (down_path, down), inputs = found
    width = io_features(down)[0]
    if len(inputs) == 1:
        path, mod = inputs[0]
        return dict(ffn_up=path, ffn_down=down_path, fused_gate_up=io_features(mod)[1] == 2 * width)
    gate = next((p for p, _ in inputs if "gate" in p.split(".")[-1] or p.endswith("w1")), inputs[0][0])
    up = next(p for p, _ in inputs if p != gate)
    return dict(ffn_gate=gate, ffn_up=up, ffn_down=down_path)


def _attends(block: nn.Module, path: str) -> bool:
    """Whether ``path`` in this block is an attention module (Nemotron-H names its attention, its
    mixer and its FFN ``mixer`` alike, one per block)."""
    if not path:
        return False
    try:
        return is_attention_class(block.get_submodule(path))
    except AttributeError:
        return False


def discover_ffn(blocks: nn.ModuleList, attention: str, hidden: int, config=None, first: int = 0) -> dict:
    """The FFN fields of the spec: from a dense block where one exists (block ``first``, the one
    whose attention was read, before the others: a hybrid's linear-attention block would offer its
    own projections), else from the shared experts of an MoE block; an MoE without shared experts
    has no dense FFN (None paths)."""
    moe = discover_moe(blocks, config)
    out: dict = {"moe": moe} if moe else {}
    dense = sorted((i for i in range(len(blocks)) if not moe or i not in moe.blocks), key=lambda i: i != first)
    errors = []
    for i in dense:  # Nemotron-H keeps mixer, attention and FFN in blocks of their own
        try:
            return {**out, **dense_ffn(blocks[i], hidden, [attention] if _attends(blocks[i], attention) else [])}
        except ArchitectureError as exc:
            errors.append(exc)
    if errors and not (moe and moe.shared_experts):
        raise errors[0]
    if moe.shared_experts:
        return {**out, **dense_ffn(blocks[moe.blocks[0]], hidden, [attention], within=moe.shared_experts)}
    return {**out, "ffn_up": None, "ffn_down": None}
