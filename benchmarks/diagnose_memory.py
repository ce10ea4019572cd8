"""Diagnose at the memory of a backward pass: ``inflora.diagnose`` against its floor and plain training.

A Qwen2-0.5B-shaped causal LM, random init (hidden 896, 14 heads / 2 key-value heads, intermediate
4864, vocabulary 151,936, tied embeddings; 24 blocks, or fewer with ``--layers``), one sequence of
``--T`` random tokens with labels. Three figures, each in its own fresh process (same seeded model and
batch, a 64-token warm-up of the same workload, then one timed run and its peak memory above the
loaded model, ``_memory.peak_extra_memory``):
  * floor    — forward + backward with every parameter frozen and the embedding output requiring
               grad: activation gradients only, no parameter gradient is ever computed or kept;
  * plain    — forward + backward keeping every parameter's ``.grad`` (then ``zero_grad``);
  * diagnose — ``inflora.diagnose`` on that one batch (set-up, probe, band and bootstrap included).
Rounds interleave the figures (order alternating); ratios are taken within a round, medians reported.
Targets (issue 19): diagnose memory ≤ 1.25 × floor, time ≤ 1.15 × plain.

    python benchmarks/diagnose_memory.py --T 512 --rounds 3 --out benchmarks/results/diagnose_memory_512.json
    python benchmarks/diagnose_memory.py --T 2048 --layers 8 --out benchmarks/results/diagnose_memory_2048.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

from _memory import peak_extra_memory

FIGURES = ("floor", "plain", "diagnose")
TARGETS = {"memory_vs_floor": 1.25, "time_vs_plain": 1.15}


def build(args):
    import torch
    import transformers

    transformers.logging.set_verbosity_error()
    torch.set_num_threads(args.threads)
    config = transformers.Qwen2Config(
        vocab_size=151936,
        hidden_size=896,
        intermediate_size=4864,
        num_hidden_layers=args.layers,
        num_attention_heads=14,
        num_key_value_heads=2,
        tie_word_embeddings=True,
        max_position_embeddings=max(args.T, 64),
    )
    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_config(config, attn_implementation="sdpa").eval()
    g = torch.Generator().manual_seed(1)

    def batch(t):
        ids = torch.randint(3, config.vocab_size, (1, t), generator=g)
        return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids.clone()}

    return model, batch(args.T), batch(64)


def workload(model, figure: str, resamples: int):

    from inflora.diagnosis import diagnose

    if figure == "floor":
        for p in model.parameters():
            p.requires_grad_(False)
        model.get_input_embeddings().register_forward_hook(lambda m, a, out: out.requires_grad_(True))

    def backward(b):
        loss = model(**b).loss
        loss.backward()
        model.zero_grad(set_to_none=True)
        return float(loss)

    def probe(b):
        return diagnose(model, [b], progress=False, resamples=resamples).config["mean_loss"]

    return probe if figure == "diagnose" else backward


def child(args) -> None:
    model, batch, warm = build(args)
    fn = workload(model, args.child, args.resamples)
    fn(warm)  # kernels, allocator
    out = {}

    def timed():
        wall, cpu = time.perf_counter(), time.process_time()
        out["loss"] = fn(batch)
        out["seconds"], out["cpu_seconds"] = time.perf_counter() - wall, time.process_time() - cpu

    out.update(peak_extra_memory(timed))
    out["model_mib"] = sum(p.numel() * p.element_size() for p in model.parameters()) / 2**20
    print("RESULT " + json.dumps(out), flush=True)


def run_child(args, figure: str) -> dict:
    cmd = [
        sys.executable,
        __file__,
        "--child",
        figure,
        "--T",
        str(args.T),
        "--layers",
        str(args.layers),
        "--threads",
        str(args.threads),
        "--resamples",
        str(args.resamples),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")), None)
    if proc.returncode != 0 or line is None:
        return {"failed": (proc.stderr or proc.stdout)[-600:]}
    res = json.loads(line[len("RESULT ") :])
    print(f"{figure:9s} {res['seconds']:7.2f}s  +{res['peak_extra_mib']:7.0f} MiB", flush=True)
    return res


def cached(args, r: int, figure: str) -> dict:
    """A figure from ``<out>.figures.jsonl`` if an interrupted run measured it; else measured, appended."""
    cache = Path(args.out).with_suffix(".figures.jsonl")
    key = f"{r}/{figure}"
    if cache.exists():
        for line in cache.read_text().splitlines():
            rec = json.loads(line)
            if rec["key"] == key:
                return rec["result"]
    res = run_child(args, figure)
    if "failed" not in res:
        with cache.open("a") as f:
            f.write(json.dumps({"key": key, "result": res}) + "\n")
    return res


def summarise(rounds: list[dict]) -> dict:
    done = [r for r in rounds if all("seconds" in r.get(f, {}) for f in FIGURES)]
    if not done:
        return {}

    def med(xs):
        return statistics.median(list(xs))

    table = {
        f: {"seconds": med(r[f]["seconds"] for r in done), "peak_extra_mib": med(r[f]["peak_extra_mib"] for r in done)}
        for f in FIGURES
    }

    def ratio(f, base, k):
        return [r[f][k] / r[base][k] for r in done]

    table["ratios"] = {
        "diagnose_memory_vs_floor": med(ratio("diagnose", "floor", "peak_extra_mib")),
        "diagnose_memory_vs_plain": med(ratio("diagnose", "plain", "peak_extra_mib")),
        "diagnose_time_vs_plain": med(ratio("diagnose", "plain", "seconds")),
        "diagnose_cpu_time_vs_plain": med(ratio("diagnose", "plain", "cpu_seconds")),
        "per_round_time_vs_plain": ratio("diagnose", "plain", "seconds"),
        "per_round_memory_vs_floor": ratio("diagnose", "floor", "peak_extra_mib"),
    }
    return table


def verdicts(table: dict) -> dict:
    r = table.get("ratios", {})
    got = {"memory_vs_floor": r.get("diagnose_memory_vs_floor"), "time_vs_plain": r.get("diagnose_time_vs_plain")}
    return {k: {"value": v, "target": TARGETS[k], "met": v is not None and v <= TARGETS[k]} for k, v in got.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--T", type=int, default=512)
    ap.add_argument("--layers", type=int, default=24)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--resamples", type=int, default=200)
    ap.add_argument("--out", default="benchmarks/results/diagnose_memory.json")
    ap.add_argument("--child", choices=FIGURES, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        return child(args)
    rounds = []
    for r in range(args.rounds):
        order = FIGURES if r % 2 == 0 else FIGURES[::-1]
        rounds.append({f: cached(args, r, f) for f in order})
    table = summarise(rounds)
    result = {
        "benchmark": "diagnose_memory",
        "command": "python " + " ".join(sys.argv),
        "model": f"Qwen2-0.5B-shaped, random init, {args.layers} blocks, fp32",
        "T": args.T,
        "batch_size": 1,
        "threads": args.threads,
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count()},
        "method": "each figure in a fresh process; 64-token warm-up; VmHWM reset after set-up minus RSS before; "
        "ratios within a round, medians over rounds",
        "rounds": rounds,
        "table": table,
        "targets": verdicts(table),
    }
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    for k, v in result["targets"].items():
        print(f"{k}: {v['value']} (target ≤ {v['target']}) {'met' if v['met'] else 'MISSED'}")


if __name__ == "__main__":
    main()
