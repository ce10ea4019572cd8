"""The feed-forward half of discovery: a dense FFN (gated, fused gate/up or plain) or an MoE block.

Roles come from shapes, not names: outside the attention module, the projections reading the
block's width are the FFN inputs and the last one writing it back is ``down``; a single input
twice as wide as ``down``'s input is a fused gate/up. An MoE block is the module with an
``experts`` child; its router and shared experts are found beside it by the names transformers
uses (``gate``/``router``, ``shared_expert(s)``).
"""
from __future__ import annotations

from torch import nn

from ..errors import ArchitectureError
from .projections import HOW_TO_OVERRIDE, io_features, projections
from .spec import MoESpec

_ROUTER = ("gate", "router")
_SHARED = ("shared_experts", "shared_expert", "shared_mlp")


def _under(path: str, roots) -> bool:
    return any(r and (path == r or path.startswith(r + ".")) for r in roots)


def find_moe(block: nn.Module, attention: str) -> tuple[str, nn.Module] | None:
    """(path, module) of the block's MoE module: the one with an ``experts`` child."""
    for path, mod in block.named_modules():
        if path and not _under(path, [attention]) and hasattr(mod, "experts") and isinstance(mod.experts, nn.Module):
            return path, mod
    return None


def moe_spec(path: str, mod: nn.Module, blocks: tuple[int, ...]) -> MoESpec:
    router = next((n for n in _ROUTER if isinstance(getattr(mod, n, None), nn.Module)
                   and getattr(getattr(mod, n), "weight", None) is not None), None)
    shared = next((n for n in _SHARED if isinstance(getattr(mod, n, None), nn.Module)), None)
    experts = mod.experts
    fused = tuple(n for n, p in experts.named_parameters(recurse=False) if p.dim() == 3)
    n_exp = (len(experts) if isinstance(experts, nn.ModuleList)
             else next((p.shape[0] for n, p in experts.named_parameters(recurse=False) if p.dim() == 3), 0))
    return MoESpec(module=path, router=f"{path}.{router}" if router else None, experts=f"{path}.experts",
                   expert_parameters=fused, shared_experts=f"{path}.{shared}" if shared else None,
                   num_experts=int(n_exp), blocks=blocks)


def dense_ffn(block: nn.Module, hidden: int, exclude: list[str], within: str | None = None) -> dict:
    """ffn_gate/ffn_up/ffn_down (paths relative to ``block``) from the projections outside
    ``exclude`` (attention, MoE), or only those under ``within`` (shared experts)."""
    projs = [(p, m) for p, m in projections(block) if not _under(p, exclude)
             and (within is None or _under(p, [within]))]
    downs = [i for i, (_, m) in enumerate(projs) if io_features(m)[1] == hidden]
    if not downs:
        raise ArchitectureError(f"{type(block).__name__}: found no feed-forward output projection (a Linear "
                                f"outside the attention writing {hidden} features); to support it, {HOW_TO_OVERRIDE}")
    d = downs[-1]
    down_path, down = projs[d]
    width = io_features(down)[0]
    inputs = [(p, m) for p, m in projs[:d] if io_features(m)[0] == hidden and io_features(m)[1] in (width, 2 * width)]
    if not inputs:
        raise ArchitectureError(f"{type(block).__name__}: found no feed-forward input projection (a Linear reading "
                                f"{hidden} features into {width} units); to support it, {HOW_TO_OVERRIDE}")
    if len(inputs) == 1:
        path, mod = inputs[0]
        return dict(ffn_up=path, ffn_down=down_path, fused_gate_up=io_features(mod)[1] == 2 * width)
    gate = next((p for p, _ in inputs if "gate" in p.split(".")[-1] or p.endswith("w1")), inputs[0][0])
    up = next(p for p, _ in inputs if p != gate)
    return dict(ffn_gate=gate, ffn_up=up, ffn_down=down_path)


def discover_ffn(blocks: nn.ModuleList, attention: str, hidden: int) -> dict:
    """The FFN fields of the spec: from a dense block where one exists, else from the shared
    experts of an MoE block; an MoE without shared experts has no dense FFN (None paths)."""
    found = [find_moe(b, attention) for b in blocks]
    moe_blocks = tuple(i for i, f in enumerate(found) if f)
    out: dict = {}
    if moe_blocks:
        out["moe"] = moe_spec(*found[moe_blocks[0]], moe_blocks)
    dense = [i for i, f in enumerate(found) if not f]
    if dense:
        return {**out, **dense_ffn(blocks[dense[0]], hidden, [attention])}
    shared = out["moe"].shared_experts
    if shared:
        return {**out, **dense_ffn(blocks[moe_blocks[0]], hidden, [attention], within=shared)}
    return {**out, "ffn_up": None, "ffn_down": None}
