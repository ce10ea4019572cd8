"""One probe pass: every registered diagnostic from one forward + one backward per batch, via hooks.

``ProbeContext`` owns the hooks shared by all diagnostics: it records the batch's attention mask,
and makes the input of the first block require grad so activation gradients exist below frozen
layers. Each diagnostic plugin (see ``inflora.metrics``) adds its own hooks and reads the context.
Attention entropy is streamed beside SDPA (``models/attention.py``) for families whose modeling code
calls transformers' attention interface, and otherwise reduced inside each attention module's hook
from the eager map, so no layer's map outlives it.
"""

from __future__ import annotations

import contextlib
import logging
import math
from dataclasses import dataclass, field

import torch
from torch import nn

from .errors import ArchitectureError, DataError
from .metrics import DIAGNOSTICS
from .models.architectures import ArchSpec, arch_for, get_attention, get_blocks, hf_model, parameter_groups
from .models.attention import resolve_attention_mode, switch_attention

log = logging.getLogger(__name__)


@dataclass
class ProbeContext:
    model: nn.Module
    inner: nn.Module = field(init=False)  # the transformers model (inside a PEFT wrapper, if any)
    spec: ArchSpec = field(init=False)
    blocks: nn.ModuleList = field(init=False)
    attention: list[nn.Module] = field(init=False)
    groups: dict = field(init=False)
    attention_mask: torch.Tensor | None = None
    attention_mode: str = "eager"  # how attention entropy is read: "streaming" (beside SDPA) or "eager" maps
    forwards: int = 0  # model forward calls seen; tells a first attention call from a checkpoint recompute
    active: bool = True
    measure_only: bool = False  # the backward's gradients exist only to be measured: plugins may drop them
    handles: list = field(default_factory=list)

    def __post_init__(self) -> None:
        self.inner = inner = hf_model(self.model)
        self.spec = arch_for(inner)
        self.blocks = get_blocks(inner)
        self.attention = [get_attention(b, self.spec) for b in self.blocks]
        self.groups = parameter_groups(inner)
        self.handles.append(inner.register_forward_pre_hook(self._record_mask, with_kwargs=True))
        self.handles.append(self.blocks[0].register_forward_pre_hook(self._input_requires_grad, with_kwargs=True))

    @property
    def num_layers(self) -> int:
        return len(self.blocks)

    def _record_mask(self, module, args, kwargs):
        ids = kwargs.get("input_ids", args[0] if args else None)
        mask = kwargs.get("attention_mask")
        if mask is None and ids is not None:
            mask = torch.ones(ids.shape[:2], dtype=torch.long, device=ids.device)
        self.attention_mask = mask
        self.forwards += 1

    def _input_requires_grad(self, module, args, kwargs):
        # Frozen embeddings give a leaf without grad: gradients would stop there and every block
        # below a frozen one would report none. Re-root the graph at the block-0 input instead.
        if not (self.active and torch.is_grad_enabled()):
            return None
        if args and torch.is_tensor(args[0]) and not args[0].requires_grad:
            return (args[0].detach().requires_grad_(True), *args[1:]), kwargs
        hs = kwargs.get("hidden_states")
        if torch.is_tensor(hs) and not hs.requires_grad:
            return args, {**kwargs, "hidden_states": hs.detach().requires_grad_(True)}
        return None

    def close(self) -> None:
        for h in self.handles:
            h.remove()
        self.handles.clear()


class LayerProbe(contextlib.AbstractContextManager):
    """Attach diagnostics to a model; call ``after_backward()`` after each ``loss.backward()``.

    Used by ``diagnose`` (dedicated probe batches) and by training (the real training batches, with
    ``active`` toggled every N steps, so no extra passes are run). With attention entropy among the
    diagnostics, ``attention`` chooses how it is read: ``'streaming'`` (default where the family
    calls transformers' attention interface: SDPA stays, entropy is streamed beside it) or
    ``'eager'`` (maps; the fallback for the others, with one log line). The model's attention
    implementation is switched while the probe is attached and switched back on ``close``.
    """

    def __init__(
        self, model: nn.Module, diagnostics: list[str] | None = None, *, attention: str | None = None, **options
    ):
        names = diagnostics or ["attention_entropy", "activation_grad", "param_grad"]
        self.plugins = [DIAGNOSTICS.get(n)(**options.get(n, {})) for n in names]
        self.ctx = ProbeContext(model)  # validates the architecture before anything is changed
        self._restore_attention: str | None = None
        if "attention_entropy" in names:
            inner = hf_model(model)
            try:
                self.ctx.attention_mode = resolve_attention_mode(inner, attention)
                why = "the probe measures attention entropy"
                if self.ctx.attention_mode == "eager" and attention is None:
                    why += (
                        f" and {self.ctx.spec.family} attention does not go through transformers' attention interface"
                    )
                self._restore_attention = switch_attention(inner, self.ctx.attention_mode, why)
            except BaseException:
                self.ctx.close()
                raise
        for p in self.plugins:
            p.attach(self.ctx)

    @property
    def attention_mode(self) -> str:
        return self.ctx.attention_mode

    def forward_kwargs(self) -> dict:
        needs = (
            self.ctx.spec.maps_need_output_attentions
            and self.ctx.attention_mode == "eager"
            and any(p.name == "attention_entropy" for p in self.plugins)
        )
        return {"output_attentions": True} if needs else {}

    def after_backward(self) -> None:
        if self.ctx.active:
            for p in self.plugins:
                p.after_backward(self.ctx)

    def gather(self) -> None:
        for p in self.plugins:
            p.gather()

    def layer_results(self, batches: list[int] | None = None, only: tuple[str, ...] | None = None) -> list[dict]:
        rows = [{"layer": i} for i in range(self.ctx.num_layers)]
        for p in self.plugins:
            if only is not None and p.name not in only:
                continue
            for row, res in zip(rows, p.layer_results(batches)):
                row.update(res)
        return rows

    def resampled_profiles(self, draws, names: tuple[str, ...]) -> list[list[list[float]]]:
        """Per bootstrap resample (a row of ``draws``, ``[R, n]`` batch indices), the per-layer
        profile of each plugin in ``names``: ``out[r][i]`` is ``layer_results(draws[r])``'s column
        for ``names[i]``, computed for every resample at once."""
        by_name = {p.name: p for p in self.plugins}
        idx = torch.as_tensor(draws, dtype=torch.long)
        columns = [by_name[n].resampled_profile(idx) for n in names]
        return [list(row) for row in zip(*(c.tolist() for c in columns))]

    def group_results(self, batches: list[int] | None = None) -> dict:
        out: dict = {}
        for p in self.plugins:
            out.update(p.group_results(batches))
        return out

    def summaries(self, batches: list[int] | None = None) -> dict:
        """Each plugin's model-level numbers by plugin name (plugins without any are left out)."""
        return {p.name: s for p in self.plugins if (s := p.summary(batches))}

    def num_batches(self) -> int:
        return max((p.num_batches() for p in self.plugins), default=0)

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        for p in self.plugins:
            p.detach()
        self.ctx.close()
        if self._restore_attention is not None:
            hf_model(self.ctx.model).set_attn_implementation(self._restore_attention)
            log.info("attention switched back to %r", self._restore_attention)
            self._restore_attention = None


def probe_step(model: nn.Module, probe: LayerProbe, batch: dict[str, torch.Tensor], precision: str = "fp32") -> float:
    """One forward + backward on ``batch`` (which carries labels), the forward under ``precision``
    autocast; returns the loss. Parameters are not updated; gradients are cleared afterwards."""
    from .devices import autocast

    device = next(model.parameters()).device
    batch = {k: v.to(device) for k, v in batch.items()}
    if int(batch["attention_mask"].sum()) == 0:
        raise DataError("a probe batch holds only padding (attention_mask is all zeros)")
    model.zero_grad(set_to_none=True)
    with autocast(device.type, precision):
        out = model(**batch, **probe.forward_kwargs())
    if getattr(out, "loss", None) is None:
        raise ArchitectureError("the model returned no loss; probe batches need labels")
    loss = out.loss
    del out  # the logits (B × T × vocab) need not live through backward: at long context they dominate memory
    probe.ctx.measure_only = True  # parameter gradients are dropped as soon as they are measured
    try:
        loss.backward()
    finally:
        probe.ctx.measure_only = False
    probe.after_backward()
    model.zero_grad(set_to_none=True)
    value = float(loss.detach())
    if not math.isfinite(value):
        log.warning("non-finite probe loss %s; gradients of this batch are flagged per layer", value)
    return value
