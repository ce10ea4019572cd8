"""The one mixture-of-experts discovery: a block's router, fused experts and shared experts, from shapes.

Why shapes: the experts are the module whose own 3-D parameters share a first axis E >= 2 (fused
``gate_up_proj`` [E, 2I, H], ``down_proj`` [E, H, I]); the router is the sibling whose ``weight`` is
[E, hidden]; shared experts are the other siblings that are MLPs. ``discover_moe`` runs once per
model inside ``arch_for`` (``ArchSpec.moe``); ``models.moe`` reads that spec for the probe, LoRA
and exports.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from ..errors import ArchitectureError
from .spec import MoESpec


@dataclass(frozen=True)
class BlockMoe:
    """One block's MoE modules, and their paths relative to the block."""

    experts: nn.Module
    router: nn.Module
    paths: dict  # experts, router, expert_parameters, shared (as in MoeLayout)
    num_experts: int
    top_k: int

    def expert_tensors(self) -> list[nn.Parameter]:
        """Every parameter of the experts module with one slice per expert on axis 0 (weights, biases)."""
        return [p for p in self.experts.parameters(recurse=False) if p.dim() >= 2 and p.shape[0] == self.num_experts]


def _fused_experts(block: nn.Module) -> tuple[str, nn.Module, int] | None:
    """The shallowest module whose own parameters include 3-D ones sharing a first axis E >= 2
    and that has a router beside it, or is named ``experts`` (then a missing router is an error):
    3-D weights without a router are block-diagonal linears (RecurrentGemma's RG-LRU gates)."""
    for name, module in block.named_modules():
        if isinstance(module, nn.modules.conv._ConvNd):  # a convolution's 3-D kernel is not a stack of experts
            continue
        sizes = {p.shape[0] for p in module.parameters(recurse=False) if p.dim() == 3}
        if (
            len(sizes) == 1
            and (e := sizes.pop()) >= 2
            and (name.split(".")[-1] == "experts" or _has_router(block, name, module, e))
        ):
            return name, module, e
    return None


def _has_router(block: nn.Module, path: str, module: nn.Module, e: int) -> bool:
    parent = block.get_submodule(_parent(path)) if _parent(path) else block
    try:
        _router(parent, module, e, path)
        return True
    except ArchitectureError:
        return False


def _parent(path: str) -> str:
    return path.rpartition(".")[0]


def _join(*parts: str) -> str:
    return ".".join(p for p in parts if p)


def _router(parent: nn.Module, experts: nn.Module, e: int, where: str) -> tuple[str, nn.Module]:
    """The first module beside the experts (or inside a sibling, e.g. ``gate.wg``) owning a weight [E, hidden]."""
    for name, child in parent.named_children():
        if child is experts:
            continue
        for sub, module in child.named_modules():
            weight = getattr(module, "weight", None)
            if isinstance(weight, nn.Parameter) and weight.dim() == 2 and weight.shape[0] == e:
                return _join(name, sub), module
    raise ArchitectureError(
        f"the MoE block {where!r} has {e} fused experts but no router (a sibling module whose "
        f"weight is [{e}, hidden]); add an override in inflora.models.moe"
    )


def _shared_linears(parent: nn.Module, skip: set[int]) -> list[str]:
    """Linear paths inside the siblings that are MLPs (two or more Linear layers): shared experts."""
    out = []
    for name, child in parent.named_children():
        if id(child) in skip:
            continue
        linears = [n for n, m in child.named_modules() if isinstance(m, nn.Linear)]
        if len(linears) >= 2:
            out += [_join(name, n) for n in linears]
    return out


def _top_k(router: nn.Module, config) -> int:
    k = getattr(router, "top_k", None) or getattr(config, "num_experts_per_tok", None)
    if not isinstance(k, int) or k < 1:
        raise ArchitectureError(
            f"{type(router).__name__} does not say how many experts each token picks "
            "(router.top_k or config.num_experts_per_tok)"
        )
    return k


def find_block_moe(block: nn.Module, config=None) -> BlockMoe | None:
    """The block's MoE parts, or None for a dense block."""
    found = _fused_experts(block)
    if found is None:
        return None
    path, experts, e = found
    moe_path = _parent(path)
    parent = block.get_submodule(moe_path) if moe_path else block
    router_name, router = _router(parent, experts, e, moe_path or type(block).__name__)
    router_owner = parent.get_submodule(router_name.split(".")[0])  # the sibling holding the router
    weights = [_join(path, n) for n, p in experts.named_parameters(recurse=False) if p.dim() == 3]
    paths = {
        "experts": path,
        "router": _join(moe_path, router_name),
        "expert_parameters": tuple(weights),
        "shared": tuple(_join(moe_path, s) for s in _shared_linears(parent, {id(experts), id(router_owner)})),
    }
    return BlockMoe(experts, router, paths, e, _top_k(router, config))


def block_moes(blocks: nn.ModuleList, config=None) -> list[BlockMoe | None]:
    return [find_block_moe(b, config) for b in blocks]


def discover_moe(blocks: nn.ModuleList, config=None) -> MoESpec | None:
    """The MoE part of a model's ``ArchSpec`` (None for a dense model), found once per model by
    ``arch_for``. All MoE blocks must share one layout (dense blocks may sit between them)."""
    found = [(i, m) for i, m in enumerate(block_moes(blocks, config)) if m]
    if not found:
        return None
    first = found[0][1]
    odd = [i for i, m in found if (m.paths, m.num_experts, m.top_k) != (first.paths, first.num_experts, first.top_k)]
    if odd:
        raise ArchitectureError(f"MoE blocks {odd} differ in layout from block {found[0][0]}; inflora needs one layout")
    experts, shared = first.paths["experts"], first.paths["shared"]
    module = _parent(experts)
    sibling = shared[0][len(module) + 1 if module else 0 :].split(".")[0] if shared else None
    return MoESpec(
        module=module,
        router=first.paths["router"],
        experts=experts,
        expert_parameters=tuple(p.rpartition(".")[2] for p in first.paths["expert_parameters"]),
        shared_experts=_join(module, sibling) if sibling else None,
        num_experts=first.num_experts,
        blocks=tuple(i for i, _ in found),
        top_k=first.top_k,
        shared=shared,
    )
