"""Cost of diagnosing vs training: MiniLM on Rotten Tomatoes validation, measured side by side.

For the same N probe batches on the same model object this times
  * train    — N plain training steps: train mode (dropout on), eager attention, forward + backward +
               AdamW step + zero_grad;
  * probe    — the one-pass probe only: ``LayerProbe`` set-up + N ``probe_step`` calls (forward +
               backward with every diagnostic hook) + tear-down, as inside ``diagnose``;
  * diagnose — the full ``inflora.diagnose()`` on those batches, incl. result assembly and the
               bootstrap stability estimate (``--resamples``, default 200 as in ``diagnose``);
  * fwd_bwd  — for reference, the probe's passes without hooks: eval mode, forward + backward +
               zero_grad, so probe/fwd_bwd is the cost of the hooks themselves.
After a warm-up round, each of ``--repeats`` rounds runs the three back to back (the order alternates
between rounds to cancel drift); the headline ratio is the median over rounds of probe/train, so
each ratio compares timings taken a few seconds apart.

Peak memory: each workload runs once more in its own fresh subprocess. After loading the model and
batches the child resets the kernel's peak-RSS counter (``/proc/self/clear_refs`` = 5) and reads
``VmHWM`` when the workload is done; the reported figure is that peak minus the resident size before
the workload, i.e. the extra resident memory (activations, gradients, optimizer state, hooks' data)
the workload needed at its peak. It is process RSS, so it counts everything torch's CPU allocator
holds, not only live tensors. Where ``clear_refs`` is unavailable, ``ru_maxrss`` is reported instead.

    python benchmarks/diagnose_overhead.py --batches 8 --batch-size 32 --max-length 64 --repeats 3 \\
        --out benchmarks/results/diagnose_overhead.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

from _memory import peak_extra_memory, run_memory_child  # noqa: E402  (benchmarks/ is on sys.path when run as a script)

TARGET, LIMIT = 1.2, 1.5


def setup(args):
    import torch
    import transformers

    from inflora.data import load_task, probe_batches
    from inflora.models import load_model

    transformers.logging.set_verbosity_error()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model, tok = load_model("minilm", num_labels=2)  # eager attention
    ds = load_task("rotten_tomatoes", "validation", args.data_dir)
    batches = probe_batches(
        ds, tok, batches=args.batches, batch_size=args.batch_size, max_length=args.max_length, seed=0
    )
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-5)
    return model, batches, optimizer


def workloads(model, optimizer, args):
    from inflora.diagnosis import diagnose
    from inflora.probe import LayerProbe, probe_step

    def train(batches):
        model.train()
        for b in batches:
            model(**b).loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)

    def probe(batches):
        model.eval()  # what diagnose does with dropout=False (its default)
        with LayerProbe(model) as p:
            for b in batches:
                probe_step(model, p, b)

    def full(batches):
        diagnose(model, batches, resamples=args.resamples, progress=False)

    def fwd_bwd(batches):
        model.eval()
        for b in batches:
            model(**b).loss.backward()
            model.zero_grad(set_to_none=True)

    return {"train": train, "probe": probe, "diagnose": full, "fwd_bwd": fwd_bwd}


def timed(fn, batches) -> tuple[float, float]:
    """(wall seconds, CPU seconds of this process, all threads)."""
    wall, cpu = time.perf_counter(), time.process_time()
    fn(batches)
    return time.perf_counter() - wall, time.process_time() - cpu


def measure_time(args) -> dict:
    model, batches, optimizer = setup(args)
    work = workloads(model, optimizer, args)
    names = list(work)
    for name in names:  # warm-up: allocator, oneDNN kernels, optimizer state
        work[name](batches[:2])
    walls, cpus = [], []
    for r in range(args.repeats):
        order = names if r % 2 == 0 else names[::-1]
        t = {name: timed(work[name], batches) for name in order}
        walls.append({k: v[0] for k, v in t.items()})
        cpus.append({k: v[1] for k, v in t.items()})
        print(
            f"round {r + 1}/{args.repeats}: " + "  ".join(f"{k} {w:.2f}s (cpu {c:.2f}s)" for k, (w, c) in t.items()),
            flush=True,
        )

    def summary(rounds):
        per = {name: [t[name] for t in rounds] for name in names}

        def ratio(a, b):
            values = [t[a] / t[b] for t in rounds]
            return {"median": statistics.median(values), "per_round": values}

        return {
            "seconds": per,
            "median_seconds": {k: statistics.median(v) for k, v in per.items()},
            "seconds_per_batch": {k: statistics.median(v) / len(batches) for k, v in per.items()},
            "ratio_probe_vs_train": ratio("probe", "train"),
            "ratio_diagnose_vs_train": ratio("diagnose", "train"),
            "ratio_probe_vs_plain_fwd_bwd": ratio("probe", "fwd_bwd"),
        }

    return {"wall": summary(walls), "cpu": summary(cpus)}


def memory_child(args) -> None:
    """Run one workload once in this fresh process and print its peak-memory figures as JSON."""
    model, batches, optimizer = setup(args)
    fn = workloads(model, optimizer, args)[args.memory_child]
    print("MEMORY " + json.dumps(peak_extra_memory(lambda: fn(batches))), flush=True)


def measure_memory(args) -> dict:
    result = {}
    for name in ("train", "probe", "diagnose"):
        cmd = [
            sys.executable,
            __file__,
            "--memory-child",
            name,
            "--batches",
            str(args.batches),
            "--batch-size",
            str(args.batch_size),
            "--max-length",
            str(args.max_length),
            "--resamples",
            str(args.resamples),
            "--threads",
            str(args.threads),
        ]
        if args.data_dir:
            cmd += ["--data-dir", args.data_dir]
        result[name] = run_memory_child(cmd, name)
    method = result["train"].pop("method")
    for v in result.values():
        v.pop("method", None)
    result["method"] = method
    result["ratio_probe_vs_train"] = result["probe"]["peak_extra_mib"] / result["train"]["peak_extra_mib"]
    result["ratio_diagnose_vs_train"] = result["diagnose"]["peak_extra_mib"] / result["train"]["peak_extra_mib"]
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--batches", type=int, default=8)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--max-length", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--resamples", type=int, default=200, help="bootstrap resamples inside diagnose()")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--data-dir", default=None, help="data folder (default: $INFLORA_DATA_DIR)")
    ap.add_argument("--no-memory", action="store_true", help="skip the peak-memory subprocesses")
    ap.add_argument("--out", default="benchmarks/results/diagnose_overhead.json")
    ap.add_argument("--memory-child", choices=["train", "probe", "diagnose"], help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.memory_child:
        return memory_child(args)

    import torch

    load_before = os.getloadavg()
    started = time.time()
    timing = measure_time(args)
    memory = None if args.no_memory else measure_memory(args)
    wall_ratio = timing["wall"]["ratio_probe_vs_train"]["median"]
    cpu_ratio = timing["cpu"]["ratio_probe_vs_train"]["median"]
    ratio = max(wall_ratio, cpu_ratio)  # judged on the less favourable clock
    result = {
        "benchmark": "diagnose_overhead",
        "command": " ".join(["python", "benchmarks/diagnose_overhead.py", *sys.argv[1:]]),
        "model": "minilm (all-MiniLM-L6-v2, 6 layers); train and fwd_bwd with eager attention as loaded, the probe with its default (streaming entropy beside SDPA since issue 11)",
        "data": "rotten_tomatoes/validation",
        "config": {
            "batches": args.batches,
            "batch_size": args.batch_size,
            "max_length": args.max_length,
            "repeats": args.repeats,
            "resamples": args.resamples,
        },
        "definitions": {
            "train": "train mode (dropout on), forward + backward + AdamW step + zero_grad, per batch",
            "probe": "LayerProbe + probe_step per batch (eval mode = diagnose's dropout=False): forward + backward with the diagnostic hooks",
            "diagnose": "inflora.diagnose() on the same batches, incl. bootstrap stability",
            "fwd_bwd": "eval mode, forward + backward + zero_grad without hooks (probe minus its diagnostics)",
            "ratio": "median over rounds of (workload time / train time) within the same round",
            "clocks": "wall = time.perf_counter; cpu = time.process_time (this process, all threads), "
            "less sensitive to other processes on a shared machine; the verdict uses the larger ratio",
        },
        "timing": timing,
        "memory": memory,
        "target": TARGET,
        "limit": LIMIT,
        "headline_ratio_probe_vs_train": ratio,
        "verdict": "within target" if ratio <= TARGET else ("within limit" if ratio <= LIMIT else "over limit"),
        "environment": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "cpu_count": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "device": "cpu",
            "platform": platform.platform(),
            "loadavg_before": load_before,
            "loadavg_after": os.getloadavg(),
            "wall_seconds": round(time.time() - started, 1),
        },
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    for clock in ("wall", "cpu"):
        t = timing[clock]
        m = t["median_seconds"]
        print(
            f"[{clock}] train {m['train']:.2f}s  probe {m['probe']:.2f}s  diagnose {m['diagnose']:.2f}s  "
            f"fwd_bwd {m['fwd_bwd']:.2f}s  | probe/train {t['ratio_probe_vs_train']['median']:.2f}  "
            f"diagnose/train {t['ratio_diagnose_vs_train']['median']:.2f}  "
            f"probe/fwd_bwd {t['ratio_probe_vs_plain_fwd_bwd']['median']:.2f}"
        )
    if memory:
        print(
            f"peak extra RSS: train {memory['train']['peak_extra_mib']:.0f} MiB, probe {memory['probe']['peak_extra_mib']:.0f} MiB, "
            f"diagnose {memory['diagnose']['peak_extra_mib']:.0f} MiB"
        )
    print(
        f"N={args.batches} batches of {args.batch_size} x <= {args.max_length} tokens: probe/train {ratio:.2f} "
        f"-> {result['verdict']} (target {TARGET}, limit {LIMIT}); written to {out}"
    )


if __name__ == "__main__":
    main()
