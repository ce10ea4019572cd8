"""``scan_weights``: the weight rules (spectrum-snr, kappa, alpha-hts) on a checkpoint's safetensors
files, one tensor at a time, without building the model.

Memory holds one block matrix and its SVD workspace, whatever the checkpoint's size: the files are
read tensor by tensor (``models.weight_files.read_tensor``) and only singular values are kept. The
blocks come from the tensor names (``models.weight_blocks``), so a family needs no architecture row
to be scanned; the family is needed only to size LoRA (``--budget params=N`` and the LoRA-parameter
column), which uses the model built on the meta device from its config (no weights).
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

from .errors import ArchitectureError, ConfigError
from .models import arch_for, hf_model, meta_model, model_config, num_layers
from .models.loading import tiny_family
from .models.weight_blocks import BlockLayout, checkpoint_layout
from .models.weight_files import read_tensor
from .select import RULES, RuleInputs, check_k, check_rules, score_rules
from .select.spectra import scan_spectra
from .select.spectra_cache import BlockCache
from .strategies.budget import Budget, match_budget


def scan_weights(
    name_or_path: str,
    rules: list[str],
    budget: Budget | None = None,
    seed: int = 0,
    progress: bool = False,
    resume_dir: Path | None = None,
) -> dict:
    """Every rule's block scores and K-block selection (as ``score_rules``), plus ``scan``: what was
    read, from where, and the seconds per block. With ``resume_dir``, finished blocks are kept there
    and a scan started again resumes after them. A ``tiny-<family>`` name has no files: its
    random-init model is built in memory and scored there."""
    from .diagnosis import budget_blocks, score_without_data

    budget = budget or Budget()
    check_rules(rules, {"weights"})
    k = budget_blocks(budget)
    if tiny_family(name_or_path):
        from .models import load_model

        return score_without_data(load_model(name_or_path, num_labels=2)[0], rules, budget, seed)
    layout = checkpoint_layout(name_or_path)
    check_k(k, layout.num_blocks)
    t0 = time.perf_counter()
    dtypes = sorted({RULES.get(r).spectrum_dtype for r in rules} - {None})
    cache = BlockCache(resume_dir, scan_key(layout, dtypes)) if resume_dir else None
    spectra = (
        scan_spectra(
            layout.matrices(),
            layout.num_blocks,
            dtypes,
            read=read_tensor,
            cache=cache,
            total=sum(len(b) for b in layout.blocks),
            progress=progress,
        )
        if dtypes
        else None
    )
    seconds = time.perf_counter() - t0
    result = score_rules(rules, RuleInputs(layout.num_blocks, spectra=spectra, seed=seed), k)
    result["budget"] = {**budget.to_dict(), "k": k}
    result["scan"] = scan_summary(layout, spectra, seconds, dtypes)
    _add_lora_sizes(result, layout, budget)
    return result


def scan_key(layout: BlockLayout, dtypes: list[str]) -> str:
    """What a resumed scan must share with the one it resumes: the same files, unchanged, the same
    block list and the same dtypes."""
    shards = sorted({ref.shard for mats in layout.blocks for ref in mats.values()})
    files = [(str(p.resolve()), p.stat().st_size, p.stat().st_mtime_ns) for p in shards]
    text = json.dumps({"files": files, "block_list": layout.block_list, "dtypes": dtypes})
    return hashlib.sha256(text.encode()).hexdigest()


def scan_summary(layout: BlockLayout, spectra, seconds: float, dtypes: list[str]) -> dict:
    refs = [ref for mats in layout.blocks for ref in mats.values()]
    largest = max(refs, key=lambda r: r.numel)
    return {
        "folder": str(layout.folder),
        "block_list": layout.block_list,
        "blocks": layout.num_blocks,
        "other_block_lists": layout.other_lists,
        "files": layout.files,
        "bytes": layout.bytes,
        "matrices": len(refs) if spectra else 0,
        "dtypes": dtypes,
        "seconds": seconds,
        "block_seconds": spectra.block_seconds if spectra else [0.0] * layout.num_blocks,
        "resumed_blocks": spectra.resumed if spectra else [],
        "largest_matrix": {"name": largest.name, "shape": list(largest.shape), "dtype": largest.dtype},
        "largest_tensor": {
            "name": layout.largest.name,
            "shape": list(layout.largest.shape),
            "dtype": layout.largest.dtype,
        },
    }


def _add_lora_sizes(result: dict, layout: BlockLayout, budget: Budget) -> None:
    """Each rule's LoRA rank and parameter count, from the model on the meta device; a checkpoint
    whose family is unknown (or whose scanned block list is not the family's) gets a note instead,
    unless a parameter budget needs the sizes."""
    try:
        causal = arch_for(model_config(str(layout.folder)).model_type).causal
        model = hf_model(meta_model(str(layout.folder), "causal-lm" if causal else "classification"))
        if num_layers(model) != layout.num_blocks:
            raise ArchitectureError(
                f"the family's block list has {num_layers(model)} blocks, "
                f"the scanned {layout.block_list} {layout.num_blocks}"
            )
    except (ArchitectureError, ConfigError) as exc:
        if budget.params:
            raise ConfigError(f"--budget params=N sizes LoRA from the model's family, which failed: {exc}") from None
        result["notes"] = [f"LoRA sizes not computed: {exc}"]
        return
    selections = {n: r["selected"] for n, r in result["rules"].items()}
    for name, sizes in match_budget(model, selections, budget).items():
        result["rules"][name].update(sizes)
