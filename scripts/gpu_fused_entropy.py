"""GPU check of the fused-entropy path (issue 19), on random-init shapes (no weights, no data):

  PYTHONPATH=src python scripts/gpu_fused_entropy.py

1. ``fused_row_entropy`` on CUDA takes the memory-efficient kernel (no fallback line) and equals the
   chunked path per row: causal, padding on both sides, sliding window, grouped-query heads, fp32 and
   bf16 inputs (the kernel always runs in fp32);
2. the probe on a random-init Llama (GQA) and Mistral (sliding window) on CUDA equals eager maps;
3. at T = 2048 the fused call is timed against the chunked path (CUDA events, median of 5).
Exits non-zero at the first failed check; prints one "ok:" line per passed check.
"""

from __future__ import annotations

import logging
import statistics

import torch

from inflora.metrics import fused_entropy
from inflora.metrics.fused_entropy import fused_row_entropy
from inflora.metrics.streaming_entropy import chunk_entropy
from inflora.models import tiny_model
from inflora.probe import LayerProbe, probe_step

DEV = "cuda"


class Fallbacks(logging.Handler):
    def __init__(self):
        super().__init__()
        self.lines = []

    def emit(self, record):
        self.lines.append(record.getMessage())


def masks(b, t):
    causal = torch.ones(t, t, dtype=torch.bool, device=DEV).tril()
    pad = torch.ones(b, t, dtype=torch.bool, device=DEV)
    pad[1, : t // 4] = False  # left padding
    pad[0, -t // 5 :] = False  # right padding
    padded = pad[:, None, None, :] & causal
    padded |= torch.eye(t, dtype=torch.bool, device=DEV)  # padded rows keep one key, as transformers does
    window = causal & torch.ones(t, t, dtype=torch.bool, device=DEV).triu(-63)
    return {"causal": None, "causal+padding": padded, "window-64": window.expand(b, 1, t, t)}


def check_rows(fallbacks):
    g = torch.Generator(device=DEV).manual_seed(0)
    for dtype in (torch.float32, torch.bfloat16):
        for hkv in (8, 2):
            q = (torch.randn(2, 8, 300, 64, generator=g, device=DEV) * 2).to(dtype)
            k = (torch.randn(2, hkv, 300, 64, generator=g, device=DEV) * 2).to(dtype)
            pos = torch.arange(300, device=DEV).expand(2, 300)
            for name, valid in masks(2, 300).items():
                got = fused_row_entropy(q, k, valid, scaling=0.125, causal=valid is None)
                assert got is not None, f"fused path refused {name} {dtype}: {fallbacks.lines}"
                want = chunk_entropy(q, k, valid, pos, scaling=0.125, causal=valid is None)
                err = float((got - want).abs().max())
                assert err < 1e-4 * max(1.0, float(want.abs().max())), (name, dtype, hkv, err)
            print(f"ok: fused entropy rows on CUDA ({dtype}, {8 // hkv} queries per key head) equal the chunked path")


def check_probe():
    for family, cfg in (("llama", {"num_key_value_heads": 2}), ("mistral", {"sliding_window": 4})):
        model = tiny_model(family, layers=2, task="causal-lm", **cfg).to(DEV)
        ids = torch.randint(5, 1000, (3, 12), device=DEV)
        mask = torch.ones_like(ids)
        mask[1, 8:] = 0
        mask[2, :5] = 0
        batch = {"input_ids": ids, "attention_mask": mask, "labels": ids.masked_fill(mask == 0, -100)}
        rows = {}
        for mode in ("eager", "streaming"):
            with LayerProbe(model, ["attention_entropy"], attention=mode) as probe:
                probe_step(model, probe, batch)
                rows[mode] = [r["head_entropy"] for r in probe.layer_results()]
        for a, b in zip(rows["streaming"], rows["eager"]):
            assert max(abs(x - y) for x, y in zip(a, b)) < 1e-4, (family, a, b)
        print(f"ok: probe on CUDA ({family}, {cfg}) streams the same entropies as eager maps")


def time_it(fn, repeats=5):
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def check_speed():
    q = torch.randn(2, 14, 2048, 64, device=DEV, dtype=torch.bfloat16)
    k = torch.randn(2, 2, 2048, 64, device=DEV, dtype=torch.bfloat16)
    pos = torch.arange(2048, device=DEV).expand(2, 2048)

    def chunked():
        for i in range(0, 2048, 64):
            chunk_entropy(q[:, :, i : i + 64], k, None, pos[:, i : i + 64], scaling=0.125, causal=True)

    fused = time_it(lambda: fused_row_entropy(q, k, None, scaling=0.125, causal=True))
    slow = time_it(chunked)
    print(f"ok: T=2048, 14 heads / 2 kv, bf16: fused {fused:.2f} ms, chunked {slow:.2f} ms ({slow / fused:.1f}x)")


def main():
    assert torch.cuda.is_available(), "no CUDA GPU"
    fallbacks = Fallbacks()
    logging.getLogger(fused_entropy.__name__).addHandler(fallbacks)
    logging.getLogger(fused_entropy.__name__).setLevel(logging.INFO)
    check_rows(fallbacks)
    check_probe()
    check_speed()
    assert not fallbacks.lines, f"the fused kernel fell back: {fallbacks.lines}"
    print("ok: no fallback to the chunked path on CUDA")


if __name__ == "__main__":
    main()
