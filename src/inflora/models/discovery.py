"""Derive a model's ``ArchSpec`` from the model itself, so a family needs no hand-written row.

The cues are what transformers already declares (see design/discovery.md): the block class in
``_no_split_modules`` (for accelerate's device map), the attention module's class name, the
``Linear``/``Conv1D`` projections inside it and their shapes, ``_supports_attention_backend`` (the
modeling code calls the attention interface), ``is_causal`` on the attention module. PEFT's
layer-pattern names (``layers``, ``h``, ``block``…) break ties. Every structural finding is checked
(shapes of a fused q/k/v, the FFN's widths); what cannot be found raises an ``ArchitectureError``
naming what was looked for and how to add a row to the override table.
"""

from __future__ import annotations

import re

from torch import nn

from ..errors import ArchitectureError, ConfigError
from .discovery_ffn import discover_ffn
from .projections import HOW_TO_OVERRIDE, io_features, is_attention_class, is_projection, projections

from .qkv_layout import qkv_layout_of
from .spec import ArchSpec

PEFT_LAYER_NAMES = ("layers", "h", "block", "blocks", "layer")
VISION_CUES = ("vision", "visual", "vit", "image", "patch")
TOWERS = ("language", "vision")

_Q = re.compile(r"^(q_proj|query|query_proj|q_lin|q|wq|q_b_proj|project_q|q_head|q_gate_proj)$", re.I)
_K = re.compile(r"^(k_proj|key|key_proj|k_lin|k|wk|project_k|k_head)$", re.I)
_V = re.compile(r"^(v_proj|value|value_proj|v_lin|v|wv|project_v|v_head)$", re.I)
_FUSED = re.compile(r"^(qkv_proj|query_key_value|c_attn|wqkv|qkv|in_proj|w_pack)$", re.I)
_RECURRENT = ("receptance",)  # RWKV's time-mixing: an "Attention" class with no softmax over keys
_MLA = ("q_a_proj", "q_b_proj", "q_proj", "kv_a_proj_with_mqa", "kv_b_proj")


def _same_class(children: list[nn.Module]) -> bool:
    return len({type(c) for c in children}) == 1


def _has_attention(block: nn.Module) -> bool:
    return any(is_attention_class(m) for m in block.modules())


def block_lists(base: nn.Module, declared: set[str]) -> list[tuple[str, nn.ModuleList]]:
    """Every ``ModuleList`` (path relative to ``base``) whose repeated children are blocks: of a
    class named in ``_no_split_modules``, or holding a submodule whose class name says Attention."""
    out = []
    for path, mod in base.named_modules():
        if not isinstance(mod, nn.ModuleList) or len(mod) == 0 or not path:
            continue
        children = list(mod)
        if not (_same_class(children) or all(type(c).__name__ in declared for c in children)):
            continue  # hybrids (OLMo-hybrid, Zamba) mix declared block classes in one list
        if type(children[0]).__name__ in declared or _has_attention(children[0]):
            out.append((path, mod))
    return out


def repeated_lists(base: nn.Module) -> list[tuple[str, nn.ModuleList]]:
    """Where no block class is declared and no block holds attention (FNet's Fourier mixing): the
    ``ModuleList``s of two or more same-class modules under one of PEFT's layer-pattern names."""
    return [
        (path, mod)
        for path, mod in base.named_modules()
        if isinstance(mod, nn.ModuleList)
        and len(mod) > 1
        and path.split(".")[-1] in PEFT_LAYER_NAMES
        and _same_class(list(mod))
        and any(True for _ in mod[0].parameters())
    ]


def tower_of(path: str, block: nn.Module) -> str:
    text = (path + " " + type(block).__name__).lower()
    return "vision" if any(c in text for c in VISION_CUES) else "language"


def choose_blocks(model: nn.Module, base: nn.Module, tower: str) -> tuple[str, nn.ModuleList, list[str]]:
    """The block list of ``tower``; also the towers the model has (for errors and ``info``)."""
    declared = set(getattr(model, "_no_split_modules", None) or ())
    found = block_lists(base, declared) or repeated_lists(base)
    if not found:
        raise ArchitectureError(
            f"{type(model).__name__}: found no block list (an nn.ModuleList of repeated modules of a class in "
            f"_no_split_modules {sorted(declared) or '(none declared)'}, or holding an *Attention module); "
            f"to support it, {HOW_TO_OVERRIDE}"
        )
    by_tower: dict[str, list[tuple[str, nn.ModuleList]]] = {}
    for path, mod in found:
        if any(path.startswith(p + ".") for p, _ in found if p != path):
            continue  # a list nested inside another list's blocks
        by_tower.setdefault(tower_of(path, mod[0]), []).append((path, mod))
    if tower not in by_tower:
        raise ArchitectureError(f"{type(model).__name__} has no {tower} tower; it has: {', '.join(sorted(by_tower))}")
    candidates = by_tower[tower]
    candidates.sort(key=lambda pm: (pm[0].split(".")[-1] not in PEFT_LAYER_NAMES, -len(pm[1])))
    path, blocks = candidates[0]
    return path, blocks, sorted(by_tower)


def check_tower(tower: str) -> str:
    if tower not in TOWERS:
        raise ConfigError(f"unknown tower {tower!r}; choose one of {', '.join(TOWERS)}")
    return tower


def find_attention(block: nn.Module) -> tuple[str, str]:
    """(container, attention): the outermost module whose class says Attention (it holds the
    output projection), and the innermost one inside it holding the query projections (it returns
    the map); a decoder's cross-attention (declared after its self-attention) is never chosen."""
    attn = [(n, m) for n, m in block.named_modules() if n and is_attention_class(m)]
    if not attn:
        raise ArchitectureError(
            f"{type(block).__name__}: found no attention module (a submodule whose class "
            f"name contains 'Attention'); to support it, {HOW_TO_OVERRIDE}"
        )
    container = attn[0][0]
    inner = [
        n
        for n, m in attn
        if (n == container or n.startswith(container + ".")) and any(is_projection(c) for c in m.children())
    ]
    return container, (inner[-1] if inner else container)


def attention_projections(block: nn.Module, container: str, attention: str, hidden: int) -> dict:
    """q/k/v/o paths (relative to the block): separate, fused (one weight) or latent (MLA)."""
    mod = block.get_submodule(container)
    projs = [(f"{container}.{n}", role_name(n), m) for n, m in projections(mod)]
    leaf = {short: path for path, short, _ in projs}
    fused = [p for p, s, _ in projs if _FUSED.match(s)]
    mla = [leaf[s] for s in _MLA if s in leaf and ("kv_a_proj_with_mqa" in leaf)]
    out_candidates = [
        p
        for p, _, m in projs
        if io_features(m)[1] == hidden
        and p not in fused + mla
        and not _Q.match(role_name(p))
        and not _K.match(role_name(p))
        and not _V.match(role_name(p))
    ]
    if not out_candidates:
        raise ArchitectureError(
            f"{type(block).__name__}: found no attention output projection (a Linear of "
            f"{container} writing {hidden} features); to support it, {HOW_TO_OVERRIDE}"
        )
    output = out_candidates[-1]
    if mla:
        q = leaf.get("q_b_proj") or leaf.get("q_proj") or mla[0]
        return dict(query=q, key=leaf["kv_b_proj"], value=leaf["kv_b_proj"], output=output, qkv_targets=tuple(mla))
    if fused:
        return dict(query=fused[0], key=fused[0], value=fused[0], output=output, fused_qkv=True)
    found = {r: [p for p, s, _ in projs if rx.match(s)] for r, rx in (("query", _Q), ("key", _K), ("value", _V))}
    missing = [r for r, ps in found.items() if not ps]
    if missing:
        raise ArchitectureError(
            f"{type(block).__name__}: found no {'/'.join(missing)} projection in {container} (looked for Linear "
            f"modules named q_proj/query/q_lin/q, k_proj/key/…, or a fused qkv_proj/query_key_value/c_attn); "
            f"to support it, {HOW_TO_OVERRIDE}"
        )
    return dict(query=found["query"][0], key=found["key"][0], value=found["value"][0], output=output)


def role_name(path: str) -> str:
    """The name a projection's role is read from: its own, or its wrapper's where the Linear sits
    one level down under a generic name (Moshi's ``q_proj.linear``)."""
    parts = path.split(".")
    return parts[-2] if parts[-1] == "linear" and len(parts) > 1 else parts[-1]


def container_width(block: nn.Module, container: str) -> int:
    """The block's residual width: what the attention's query (or fused q/k/v) projection reads."""
    projs = projections(block.get_submodule(container))
    if not projs:
        raise ArchitectureError(
            f"{type(block).__name__}: the attention module {container!r} holds no Linear "
            f"projection; to support it, {HOW_TO_OVERRIDE}"
        )
    reads = [m for n, m in projs if _Q.match(role_name(n)) or _FUSED.match(role_name(n)) or role_name(n) == "q_a_proj"]
    return io_features((reads or [projs[0][1]])[0])[0]


def embedding_paths(base: nn.Module, blocks_path: str, block_paths: list[str]) -> tuple[str, ...]:
    """Modules beside the chosen block list (on its path up to ``base``) that hold embeddings
    (an ``nn.Embedding``, or a class named *Embed* with parameters), but no block list."""
    parts = blocks_path.split(".")
    out = []
    for depth in range(len(parts)):
        prefix = ".".join(parts[:depth])
        parent = base.get_submodule(prefix) if prefix else base
        for name, child in parent.named_children():
            path = f"{prefix}.{name}" if prefix else name
            if path == ".".join(parts[: depth + 1]) or any(b == path or b.startswith(path + ".") for b in block_paths):
                continue
            has_params = any(True for _ in child.parameters())
            embeds = isinstance(child, nn.Embedding) or "Embed" in type(child).__name__
            if has_params and (embeds or any(isinstance(m, nn.Embedding) for m in child.modules())):
                out.append(path)
    return tuple(out)


def entropy_decision(model: nn.Module, attention: nn.Module) -> tuple[bool, str | None]:
    """(streaming works, why not): streaming needs the attention interface and a plain masked
    softmax; soft-capping, sinks and ALiBi change the distribution, so their maps come from eager."""
    config = getattr(model, "config", None)
    if getattr(config, "attn_logit_softcapping", None):
        return False, "logit soft-capping (attn_logit_softcapping) changes the softmax; entropy read from eager maps"
    if getattr(attention, "sinks", None) is not None:
        return False, (
            "learned attention sinks join the softmax; entropy read from eager maps, "
            "with each row's sink share counted as one more outcome"
        )
    if getattr(config, "alibi", False) or getattr(config, "model_type", "") in ("bloom", "mpt"):
        return False, "ALiBi adds a position bias to the scores; entropy read from eager maps"
    if not getattr(model, "_supports_attention_backend", False):
        return (
            False,
            "its attention code does not go through transformers' attention interface; entropy read from eager maps",
        )
    return True, None


def attention_map_index(model: nn.Module, attention: nn.Module) -> int:
    """Where the eager map sits in the attention module's output tuple, as the model declares it
    for transformers' own ``output_attentions`` recording (``_can_record_outputs``): 1 unless an
    ``OutputRecorder`` says otherwise. T5 returns (output, position bias, map) and declares -1; a
    negative index counts from the end, so it holds for a wrapper passing the inner tuple's tail on."""
    declared = (getattr(model, "_can_record_outputs", None) or {}).get("attentions")
    for recorder in declared if isinstance(declared, (list, tuple)) else [declared]:
        index = getattr(recorder, "index", None)
        if isinstance(index, int) and (index < 0 or getattr(recorder, "target_class", None) is type(attention)):
            return index
    return 1


def is_causal(model: nn.Module, attention: nn.Module) -> bool:
    flag = getattr(attention, "is_causal", None)
    if flag is not None:
        return bool(flag)
    from transformers.models.auto.modeling_auto import (
        MODEL_FOR_CAUSAL_LM_MAPPING_NAMES,
        MODEL_FOR_MASKED_LM_MAPPING_NAMES,
    )

    kind = getattr(getattr(model, "config", None), "model_type", None)
    return kind in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES and kind not in MODEL_FOR_MASKED_LM_MAPPING_NAMES


def discover(model: nn.Module, base: nn.Module, tower: str = "language") -> ArchSpec:
    """The ``ArchSpec`` of ``model`` (a transformers model; ``base`` its ``base_model``)."""
    check_tower(tower)
    blocks_path, blocks, towers = choose_blocks(model, base, tower)
    found = softmax_attention(blocks, getattr(model.config, "layer_types", None))
    if found is None:
        return attention_free(model, base, blocks_path, blocks, tower, towers)
    index, container, attention, projections = found
    block = blocks[index]
    hidden = container_width(block, container)
    ffn = discover_ffn(blocks, container, hidden, model.config, first=index)
    streaming, note = entropy_decision(model, block.get_submodule(attention))
    cls = type(block.get_submodule(attention)).__name__
    free = tuple(i for i, b in enumerate(blocks) if not _has_module(b, attention, cls))
    if free:
        note = (
            f"{note}; " if note else ""
        ) + f"blocks {list(free)} have no softmax attention: entropy does not apply there"
    all_lists = [p for p, _ in block_lists(base, set(getattr(model, "_no_split_modules", None) or ()))]
    kind = getattr(model.config, "model_type", type(model).__name__)
    return ArchSpec(
        family=kind if tower == "language" else f"{kind}:{tower}",
        model_types=(kind,),
        blocks=blocks_path,
        attention=attention,
        embeddings=embedding_paths(base, blocks_path, all_lists),
        **projections,
        **ffn,
        causal=is_causal(model, block.get_submodule(attention)) and tower == "language",
        maps_need_output_attentions=not streaming,
        attention_interface=streaming,
        entropy_note=note,
        tower=tower,
        towers=tuple(towers),
        discovered=True,
        fused_conv1d=type(getattr(q := block.get_submodule(projections["query"]), "base_layer", q)).__name__
        == "Conv1D",
        attention_class=cls,
        attention_free_blocks=free,
        map_index=attention_map_index(model, block.get_submodule(attention)),
        qkv_layout=qkv_layout_of(model, block, projections["query"], tower) if projections.get("fused_qkv") else None,
    )


def _has_module(block: nn.Module, path: str, cls: str) -> bool:
    try:
        return type(block.get_submodule(path)).__name__ == cls
    except AttributeError:
        return False


_SOFTMAX_LAYER_TYPES = ("full_attention", "sliding_attention", "chunked_attention", "attention")


def softmax_attention(blocks: nn.ModuleList, layer_types=None):
    """(block index, container, attention, projections) of the first block whose attention has
    q/k/v projections; None when no block has one (state-space and recurrent models). Hybrid
    models (Jamba, Qwen3-Next, MiniMax) mix such blocks with state-space or linear ones; where the
    config's ``layer_types`` names them, softmax blocks are tried first, since a linear-attention
    module (Kimi's delta rule) also has q/k/v projections but no attention map."""
    errors = []
    order = list(range(len(blocks)))
    if layer_types and len(layer_types) >= len(blocks):
        order.sort(key=lambda i: layer_types[i] not in _SOFTMAX_LAYER_TYPES)
    for i in order:
        block = blocks[i]
        try:
            container, attention = find_attention(block)
            if any(role_name(n) in _RECURRENT for n, _ in projections(block.get_submodule(container))):
                raise ArchitectureError(
                    f"{type(block).__name__}: found no attention module with a softmax "
                    f"({container!r} is recurrent time-mixing)"
                )
            hidden = container_width(block, container)
            return i, container, attention, attention_projections(block, container, attention, hidden)
        except ArchitectureError as exc:
            errors.append(exc)
    if any("found no attention module" not in str(e) for e in errors):
        raise next(e for e in errors if "found no attention module" not in str(e))
    return None


def attention_free(model, base, blocks_path, blocks, tower, towers) -> ArchSpec:
    """The spec of a model without softmax attention: the gradient metrics and LoRA read its
    block projections; entropy does not apply (said in the diagnosis, never a number)."""
    hidden = getattr(model.config.get_text_config(), "hidden_size", None)
    if hidden is None:
        raise ArchitectureError(
            f"{type(model).__name__}: found no attention module and no config.hidden_size to "
            f"find the block's projections by; to support it, {HOW_TO_OVERRIDE}"
        )
    try:
        ffn, targets = discover_ffn(blocks, "", hidden, model.config), ()
    except ArchitectureError:  # a state-space mixer whose input projection also makes gates and states (Mamba-2)
        if not any(n.endswith("A_log") for n, _ in blocks[0].named_parameters()):
            raise
        ffn, targets = dict(ffn_up=None, ffn_down=None), mixer_projections(blocks[0], hidden)
    all_lists = [p for p, _ in block_lists(base, set(getattr(model, "_no_split_modules", None) or ()))]
    kind = model.config.model_type
    return ArchSpec(
        family=kind if tower == "language" else f"{kind}:{tower}",
        model_types=(kind,),
        blocks=blocks_path,
        attention=None,
        query=None,
        key=None,
        value=None,
        output=None,
        embeddings=embedding_paths(base, blocks_path, all_lists),
        **ffn,
        causal=True,
        attention_interface=False,
        entropy_note="no block has softmax attention (a state-space, recurrent or Fourier-mixing model): entropy does not apply",
        tower=tower,
        towers=tuple(towers),
        discovered=True,
        attention_free_blocks=tuple(range(len(blocks))),
        block_targets=targets,
    )


def mixer_projections(block: nn.Module, hidden: int) -> tuple[str, ...]:
    """The projections of a block without a readable FFN that read or write its residual width
    (a Mamba-2 mixer's ``in_proj`` and ``out_proj``): what LoRA adapts there. Its hidden units are
    not one projection's output, so the FFN metrics (dormant units, ReDo) skip it and say so."""
    found = tuple(p for p, m in projections(block) if hidden in io_features(m))
    if not found:
        raise ArchitectureError(
            f"{type(block).__name__}: found no attention, no feed-forward and no projection "
            f"reading or writing {hidden} features; to support it, {HOW_TO_OVERRIDE}"
        )
    return found
