"""Training throughput at the same global batch: 1 vs 2 CPU processes (torchrun, gloo), and on a
GPU fp32 vs bf16 — every variant a real ``inflora finetune`` run on all-MiniLM-L6-v2, side by side.

CPU: the variants run interleaved, ``--rounds`` times each, in a fresh order per round so a busy
machine slows all alike: one process × 2 threads at batch 32, two processes × 1 thread at batch 16
(torchrun's default of one thread per rank), and one process × 1 thread for reference. Reported:
each variant's median optimizer steps per second (``metrics.json``'s ``steps_per_second``: training
time only, evaluation excluded) and ratios of medians to the single 2-thread process.

GPU (``--gpu``, needs CUDA): fp32 vs bf16 (and fp16) at the same batch on ``cuda``, interleaved, as
median seconds per step and the bf16/fp32 ratio; with two GPUs also 2 processes vs 1.

    python benchmarks/distributed.py --rounds 3            # CPU, writes benchmarks/results/distributed.json
    python benchmarks/distributed.py --gpu --rounds 3      # on a GPU machine, writes distributed_gpu.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def finetune_cmd(args, out: Path, batch_size: int, device: str, precision: str) -> list[str]:
    return [
        "-m",
        "inflora",
        "finetune",
        "--model",
        args.model,
        "--strategy",
        args.strategy,
        "--layers",
        "0,1",
        "--epochs",
        "1",
        "--limit-train",
        str(args.limit_train),
        "--limit-eval",
        "32",
        "--max-length",
        str(args.max_length),
        "--batch-size",
        str(batch_size),
        "--log-every",
        "1000",
        "--device",
        device,
        "--precision",
        precision,
        "--out",
        str(out),
    ]


def run_variant(v: dict, args, root: Path, i: int) -> dict:
    """One fresh finetune run of variant ``v``; returns its metrics."""
    out = root / f"{v['name'].replace(' ', '_')}-{i}"
    env = {**os.environ, "OMP_NUM_THREADS": str(v["threads"]), "TOKENIZERS_PARALLELISM": "false"}
    cmd = finetune_cmd(args, out, v["batch_size"], v["device"], v["precision"])
    if v["procs"] > 1:
        cmd = [
            "-m",
            "torch.distributed.run",
            "--nproc-per-node",
            str(v["procs"]),
            "--master-addr",
            "127.0.0.1",
            "--master-port",
            str(free_port()),
            *cmd,
        ]
    t0 = time.perf_counter()
    res = subprocess.run([sys.executable, *cmd], env=env, capture_output=True, text=True)
    if res.returncode != 0:
        raise SystemExit(f"{v['name']} failed:\n{res.stderr[-3000:]}")
    m = json.loads((out / "metrics.json").read_text())
    return {
        "steps_per_second": m["steps_per_second"],
        "seconds_per_step": 1 / m["steps_per_second"],
        "train_seconds": m["train_seconds"],
        "steps": m["steps"],
        "wall_seconds": time.perf_counter() - t0,
        "world_size": m["world_size"],
        "device": m["device"],
        "precision": m["precision"],
        "global_batch_size": m["global_batch_size"],
        "validation_accuracy": m["accuracy"]["validation"],
    }


def variants(args) -> list[dict]:
    b = args.global_batch
    if not args.gpu:
        return [
            dict(name="1 process x 2 threads", procs=1, threads=2, batch_size=b, device="cpu", precision="fp32"),
            dict(name="2 processes x 1 thread", procs=2, threads=1, batch_size=b // 2, device="cpu", precision="fp32"),
            dict(name="1 process x 1 thread", procs=1, threads=1, batch_size=b, device="cpu", precision="fp32"),
        ]
    import torch

    out = [
        dict(name=f"cuda {p}", procs=1, threads=4, batch_size=b, device="cuda", precision=p)
        for p in ("fp32", "bf16", "fp16")
    ]
    if torch.cuda.device_count() >= 2:
        out.append(dict(name="2 GPUs bf16", procs=2, threads=4, batch_size=b // 2, device="cuda", precision="bf16"))
    return out


def summarise(results: dict[str, list[dict]], base: str) -> dict:
    med = {k: statistics.median(r["steps_per_second"] for r in v) for k, v in results.items()}
    return {
        "median_steps_per_second": med,
        "ratio_to_" + base.replace(" ", "_"): {k: med[k] / med[base] for k in med},
        "median_seconds_per_step": {k: 1 / v for k, v in med.items()},
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--gpu", action="store_true", help="fp32 vs bf16/fp16 on cuda (and 2 GPUs when there are two)")
    ap.add_argument("--model", default="minilm")
    ap.add_argument("--strategy", default="lora-inflection")
    ap.add_argument("--global-batch", type=int, default=32)
    ap.add_argument(
        "--limit-train", type=int, default=512, help="training examples per run (steps = this / global batch)"
    )
    ap.add_argument("--max-length", type=int, default=64)
    ap.add_argument("--shared", default="", help="note how the machine was loaded while measuring (recorded)")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    out_path = Path(args.out or f"benchmarks/results/distributed{'_gpu' if args.gpu else ''}.json")

    from inflora.io import atomic_write_json, versions

    vs = variants(args)
    results: dict[str, list[dict]] = {v["name"]: [] for v in vs}
    rng = random.Random(0)
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(args.rounds):
            order = vs[:]
            rng.shuffle(order)
            for v in order:
                r = run_variant(v, args, Path(tmp), i)
                results[v["name"]].append(r)
                print(
                    f"round {i + 1}/{args.rounds} {v['name']}: {r['steps_per_second']:.3f} steps/s "
                    f"({r['steps']} steps, global batch {r['global_batch_size']})",
                    flush=True,
                )
    summary = summarise(results, vs[0]["name"])
    atomic_write_json(
        out_path,
        {
            "what": __doc__.split("\n")[0],
            "command": "python " + " ".join(sys.argv),
            "variants": vs,
            "rounds": args.rounds,
            "runs": results,
            "summary": summary,
            "machine_load": args.shared,
            "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
            "versions": versions(),
        },
    )
    for k, v in summary["median_steps_per_second"].items():
        print(f"{k:>24}: {v:.3f} steps/s  ratio {v / summary['median_steps_per_second'][vs[0]['name']]:.2f}")
    print(f"wrote {out_path}")


if __name__ == "__main__":
    main()
