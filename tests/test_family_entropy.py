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
