"""T5 and mT5 regression: their attention returns (output, position bias, map), and the probe
once read the position bias (logits with -inf masks) as the map, giving NaN per-block entropy.
The map's place comes from what the model declares for transformers' own ``output_attentions``
recording (``ArchSpec.map_index``); the probe's entropy must equal a slow loop over the maps
transformers itself returns."""

import math

import pytest
import torch
import transformers

from inflora.models import arch_for, tiny_model
from test_streaming_entropy import padded_batch, probe_rows, sharpen

transformers.logging.set_verbosity_error()


def _reference(maps, mask, causal):
    """Per-head mean entropy over real queries of each row over real keys (those up to the query
    where causal): a slow loop."""
    out = []
    for a in maps:
        a = a.double()
        per_head = []
        for h in range(a.shape[1]):
            values = [
                -sum(
                    float(p) * math.log(float(p))
                    for s, p in enumerate(a[b, h, t, : t + 1 if causal else None])
                    if mask[b, s] and p > 0
                )
                for b in range(a.shape[0])
                for t in range(a.shape[2])
                if mask[b, t]
            ]
            per_head.append(sum(values) / len(values))
        out.append(per_head)
    return out


@pytest.mark.parametrize("family,encoder,decoder", [("t5", 2, 3), ("mt5", 2, 3), ("t5", 3, 2)])
def test_t5_entropy_is_finite_and_equals_the_maps_transformers_returns(family, encoder, decoder):
    model = sharpen(tiny_model(family, layers=encoder, task="classification", num_decoder_layers=decoder))
    spec = arch_for(model)  # the longer stack is the block list: the causal decoder, or the encoder
    stack = "decoder" if decoder > encoder else "encoder"
    assert spec.blocks == f"{stack}.block" and spec.causal == (stack == "decoder")
    assert spec.map_index == -1 and spec.entropy_path == "eager"  # relative position bias: eager, said
    batch = padded_batch("classification", "right")
    last = batch["attention_mask"].sum(1) - 1
    batch["input_ids"][torch.arange(3), last] = model.config.eos_token_id  # T5's classifier reads its <eos>
    _, rows = probe_rows(model, batch, "eager")
    with torch.no_grad():
        out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], output_attentions=True)
    maps = out.decoder_attentions if stack == "decoder" else out.encoder_attentions
    want = _reference(maps, batch["attention_mask"].bool(), spec.causal)
    assert len(rows) == len(want) == max(encoder, decoder)
    for row, ref in zip(rows, want):
        assert all(math.isfinite(v) for v in row["head_entropy"])
        assert row["head_entropy"] == pytest.approx(ref, rel=1e-5)
    spread = [h for r in rows for h in r["head_entropy"]]
    assert max(spread) - min(spread) > 0.05  # heads differ: the comparison has teeth
