"""Streaming entropy equals the eager maps' entropy per block and head on every discovered family
whose attention goes through the interface with a plain masked softmax (q/k norms, sliding and
global layers, latent attention, partial rotary, fused q/k/v); the others are refused by name."""

import pytest
import transformers

from inflora.errors import ConfigError
from inflora.models import arch_for, tiny_model
from inflora.models.tiny import FAMILIES, VISION_LANGUAGE
from inflora.probe import LayerProbe
from test_family_matrix import task_of
from test_streaming_entropy import assert_rows_match, padded_batch, probe_rows, sharpen

transformers.logging.set_verbosity_error()
ALL = FAMILIES + VISION_LANGUAGE


def _model(family):
    task = task_of(family)
    probe = tiny_model(family, layers=1, task=task)
    mixed = "sliding_attention" in (getattr(probe.config.get_text_config(), "layer_types", None) or [])
    extra = {"sliding_window": 4} if mixed else {}  # a window shorter than the 12-token batch
    return sharpen(tiny_model(family, layers=4, task=task, **extra)), task


@pytest.mark.parametrize("family", ALL)
def test_streaming_equals_eager_on_every_family_that_has_both(family):
    model, task = _model(family)
    spec = arch_for(model)
    if not spec.attention_interface:
        assert spec.entropy_note
        with pytest.raises(ConfigError, match="attention='streaming' needs"):
            LayerProbe(model, ["attention_entropy"], attention="streaming")
        return
    batch = padded_batch(task, "left" if spec.causal else "right")
    _, eager = probe_rows(model, batch, "eager")
    _, streaming = probe_rows(model, batch, "streaming")
    assert len(eager) == 4
    assert_rows_match(streaming, eager)
    spread = [h for r in eager for h in r["head_entropy"]]
    assert max(spread) - min(spread) > 0.05  # heads really differ, so the comparison has teeth


def _sink_reference(maps, mask):
    """Per-head mean entropy of the full softmax rows [a over the causal real keys, 1 − Σa] (the
    learned sink's share), over non-padding queries: a slow loop over the captured eager maps."""
    import math

    out = []
    for a in maps:
        a = a.double()
        per_head = []
        for h in range(a.shape[1]):
            values = []
            for b in range(a.shape[0]):
                for t in range(a.shape[2]):
                    if not mask[b, t]:
                        continue
                    row = [float(a[b, h, t, s]) for s in range(t + 1) if mask[b, s]]
                    row.append(1 - sum(row))
                    values.append(-sum(p * math.log(p) for p in row if p > 0))
            per_head.append(sum(values) / len(values))
        out.append(per_head)
    return out


def test_sink_entropy_is_that_of_the_distribution_gpt_oss_uses():
    import torch

    model = sharpen(tiny_model("gpt_oss", layers=2, task="causal-lm"))
    with torch.no_grad():
        for block in model.model.layers:
            block.self_attn.sinks.fill_(1.0)  # a sink with a visible share of every row
    batch = padded_batch("causal-lm", "left")
    maps = []
    hooks = [b.self_attn.register_forward_hook(lambda m, a, o: maps.append(o[1].detach())) for b in model.model.layers]
    _, rows = probe_rows(model, batch, "eager")
    for h in hooks:
        h.remove()
    assert float(maps[0].sum(-1).max()) < 0.99  # the map really leaves the sink's share out
    want = _sink_reference(maps, batch["attention_mask"].bool())
    for row, ref in zip(rows, want):
        assert row["head_entropy"] == pytest.approx(ref, rel=1e-5)
