"""Per-step cost of each fine-tuning strategy on MiniLM, measured side by side in one run.

Every strategy gets its own copy of all-MiniLM-L6-v2 (same seeded classifier), the same AdamW set-up
as ``inflora finetune`` (its learning rate, weight decay 0.01 except biases/norms, clipping at 1.0) and
the same fixed list of Rotten Tomatoes *train* batches (length-grouped, dynamically padded, batch
32, at most 64 tokens, SDPA attention as in ``finetune``). A step is forward + backward + clipping +
AdamW step + zero_grad, in train mode (dropout on), without the gradient probe.

Timing: after a warm-up (optimizer state, allocator, kernels), each of ``--rounds`` rounds takes
``--steps`` batches and, for each batch, runs one step of every strategy in a freshly shuffled order:
every strategy sees the same batches and the compared steps are seconds apart. Reported: the median
step time per strategy over all timed steps, and the step time relative to ``full`` as the median
over rounds of (strategy's time / full's time on the same batches in that round).

Peak memory: each strategy then runs ``--steps`` steps in its own fresh subprocess. After loading
the model, applying the strategy and building the batches, the child resets the kernel's peak-RSS
counter (``/proc/self/clear_refs`` = 5) and reads ``VmHWM`` when the steps are done; the figure is
that peak minus the resident size before the steps: the extra memory training needed (activations,
gradients, optimizer state). It is process RSS (what torch's CPU allocator holds), not live tensors.

    python benchmarks/strategy_cost.py --layers 0,1,2,4,5 --rounds 5 --steps 4 --threads 1
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import statistics
import sys
import time

from _memory import peak_extra_memory, run_memory_child  # noqa: E402  (benchmarks/ is on sys.path when run as a script)

STRATEGIES = ("full", "head", "shallow", "lora-all", "lora-inflection", "lora-random")
DEFAULT_BAND = "0,1,2,4,5"  # what diagnose selects for MiniLM on RT validation


def build(args, names):
    """Models (one per strategy), their optimizers, and the shared list of batches."""
    import copy

    import torch
    import transformers

    from inflora.data import EncodedSplit, load_task
    from inflora.models import load_model
    from inflora.strategies import StrategyOptions, apply_strategy, count_parameters
    from inflora.training.parts import build_optimizer as _optimizer

    transformers.logging.set_verbosity_error()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    base, tok = load_model("minilm", num_labels=2, attn_implementation="sdpa")
    train = load_task("rotten_tomatoes", "train", args.data_dir)
    encoded = EncodedSplit(train, tok, args.max_length)
    batches = list(encoded.batches(args.batch_size, seed=0))[: args.batches]
    layers = [int(x) for x in args.layers.split(",")]
    runs = {}
    for name in names:
        torch.manual_seed(0)
        applied = apply_strategy(name, copy.deepcopy(base), StrategyOptions(layers=layers, k=args.k, seed=args.seed))
        model = applied.model.train()
        trainable, total = count_parameters(model)
        runs[name] = {
            "model": model,
            "optimizer": _optimizer(model, applied.lr, 0.01),
            "layers": applied.layers,
            "trainable_params": trainable,
            "total_params": total,
        }
    del base
    return runs, batches


def step(run, batch, max_grad_norm=1.0) -> None:
    import torch

    model, optimizer = run["model"], run["optimizer"]
    model(**batch).loss.backward()
    torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], max_grad_norm)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def measure_time(args, names) -> tuple[dict, dict]:
    runs, batches = build(args, names)
    rng = random.Random(0)
    for name in names:  # warm-up: optimizer state, allocator, kernels
        for b in batches[:2]:
            step(runs[name], b)
    per_step = {n: [] for n in names}  # [round * steps + i] -> seconds, same batch for every strategy
    per_round = []
    for r in range(args.rounds):
        chosen = [batches[(r * args.steps + i) % len(batches)] for i in range(args.steps)]
        totals = dict.fromkeys(names, 0.0)
        for b in chosen:  # every strategy steps on this batch, in a fresh random order, seconds apart
            order = list(names)
            rng.shuffle(order)
            for name in order:
                t0 = time.perf_counter()
                step(runs[name], b)
                dt = time.perf_counter() - t0
                per_step[name].append(dt)
                totals[name] += dt
        per_round.append(totals)
        print(
            f"round {r + 1}/{args.rounds}: " + "  ".join(f"{n} {totals[n] / args.steps * 1000:.0f}ms" for n in names),
            flush=True,
        )
    info = {n: {k: runs[n][k] for k in ("layers", "trainable_params", "total_params")} for n in names}
    timing = {}
    for n in names:
        ratios = [t[n] / t["full"] for t in per_round] if "full" in names else []
        timing[n] = {
            "median_step_ms": statistics.median(per_step[n]) * 1000,
            "step_ms": [round(x * 1000, 2) for x in per_step[n]],
            "ratio_vs_full": statistics.median(ratios) if ratios else None,
            "ratio_vs_full_per_round": ratios,
        }
    if {"lora-inflection", "lora-all"} <= set(names):
        pair = [t["lora-inflection"] / t["lora-all"] for t in per_round]
        steps = [a / b for a, b in zip(per_step["lora-inflection"], per_step["lora-all"])]
        timing["lora-inflection_vs_lora-all"] = {
            "median": statistics.median(pair),
            "per_round": pair,
            "median_per_step": statistics.median(steps),
            "steps_faster_or_equal": sum(x <= 1 for x in steps),
            "steps": len(steps),
        }
    return timing, info


def memory_child(args) -> None:
    runs, batches = build(args, [args.memory_child])
    run = runs[args.memory_child]

    def steps():
        for i in range(args.steps):
            step(run, batches[i % len(batches)])

    print("MEMORY " + json.dumps(peak_extra_memory(steps)), flush=True)


def measure_memory(args, names) -> dict:
    result = {}
    for name in names:
        cmd = [
            sys.executable,
            __file__,
            "--memory-child",
            name,
            "--layers",
            args.layers,
            "--k",
            str(args.k),
            "--seed",
            str(args.seed),
            "--steps",
            str(args.steps),
            "--batches",
            str(args.batches),
            "--batch-size",
            str(args.batch_size),
            "--max-length",
            str(args.max_length),
            "--threads",
            str(args.threads),
        ]
        if args.data_dir:
            cmd += ["--data-dir", args.data_dir]
        result[name] = run_memory_child(cmd, name)
    methods = {v.pop("method") for v in result.values()}
    result["method"] = " / ".join(sorted(methods))
    return result


def table(result) -> str:
    t, info, mem = result["timing"], result["strategies"], result["memory"] or {}
    lines = [
        "| strategy | adapted blocks | trainable params | step time (median) | vs `full` | peak extra RSS |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for n in result["config"]["strategies"]:
        ratio = t[n]["ratio_vs_full"]
        m = mem.get(n, {}).get("peak_extra_mib")
        lines.append(
            f"| `{n}` | {','.join(map(str, info[n]['layers'])) or '-'} | {info[n]['trainable_params']:,} | "
            f"{t[n]['median_step_ms']:.0f} ms | {'' if ratio is None else f'{ratio:.2f}×'} | "
            f"{'' if m is None else f'{m:.0f} MiB'} |"
        )
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument(
        "--layers", default=DEFAULT_BAND, help="the inflection band (lora-inflection; size for lora-random)"
    )
    ap.add_argument("--strategies", default=",".join(STRATEGIES))
    ap.add_argument("--k", type=int, default=2, help="shallow: top-k blocks")
    ap.add_argument("--seed", type=int, default=42, help="lora-random's band seed")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--steps", type=int, default=4, help="steps per strategy per round (and in each memory child)")
    ap.add_argument("--batches", type=int, default=20, help="size of the fixed batch list the rounds cycle through")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--max-length", type=int, default=64)
    ap.add_argument("--threads", type=int, default=1, help="torch threads (0: torch's default)")
    ap.add_argument("--data-dir", default=None, help="data folder (default: $INFLORA_DATA_DIR)")
    ap.add_argument("--no-memory", action="store_true", help="skip the peak-memory subprocesses")
    ap.add_argument("--out", default="benchmarks/results/strategy_cost.json")
    ap.add_argument("--memory-child", choices=STRATEGIES, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.memory_child:
        return memory_child(args)
    names = [s.strip() for s in args.strategies.split(",") if s.strip()]
    unknown = sorted(set(names) - set(STRATEGIES))
    if unknown:
        raise SystemExit(f"unknown strategies {unknown}; choose from {', '.join(STRATEGIES)}")

    import torch

    load_before = os.getloadavg()
    started = time.time()
    timing, info = measure_time(args, names)
    memory = None if args.no_memory else measure_memory(args, names)
    checks = {}
    if "full" in names:
        lora = [n for n in names if n.startswith("lora")]
        checks["lora_cheaper_than_full"] = {n: timing[n]["ratio_vs_full"] < 1 for n in lora}
    if "lora-inflection_vs_lora-all" in timing:
        pair = timing["lora-inflection_vs_lora-all"]
        checks["lora_inflection_no_slower_than_lora_all"] = {
            "median_ratio": pair["median"],
            "rounds_faster_or_equal": sum(x <= 1 for x in pair["per_round"]),
            "rounds": len(pair["per_round"]),
            "median_ratio_per_step": pair["median_per_step"],
            "steps_faster_or_equal": pair["steps_faster_or_equal"],
            "steps": pair["steps"],
            "holds": pair["median"] <= 1.0,
        }
    if memory and "full" in memory:
        checks["lora_less_memory_than_full"] = {
            n: memory[n]["peak_extra_mib"] < memory["full"]["peak_extra_mib"] for n in names if n.startswith("lora")
        }
    result = {
        "benchmark": "strategy_cost",
        "command": " ".join(["python", "benchmarks/strategy_cost.py", *sys.argv[1:]]),
        "model": "minilm (all-MiniLM-L6-v2, 6 layers, SDPA attention)",
        "data": "rotten_tomatoes/train, length-grouped batches (seed 0), dynamic padding",
        "config": {
            "strategies": names,
            "layers": [int(x) for x in args.layers.split(",")],
            "k": args.k,
            "seed": args.seed,
            "rounds": args.rounds,
            "steps": args.steps,
            "batches": args.batches,
            "batch_size": args.batch_size,
            "max_length": args.max_length,
        },
        "definitions": {
            "step": "train mode, forward + backward + clip_grad_norm(1.0) + AdamW step (finetune's groups and lr)"
            " + zero_grad",
            "ratio_vs_full": "median over rounds of (strategy's time / full's time on the same batches, same round)",
            "interleaving": "per batch, one step of every strategy in a shuffled order",
            "peak_extra_rss": "fresh process per strategy: VmHWM (reset before the steps) minus VmRSS before the steps",
        },
        "strategies": info,
        "timing": timing,
        "memory": memory,
        "checks": checks,
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
    from inflora.io import atomic_write_json

    out = atomic_write_json(args.out, result)
    print()
    print(table(result))
    print()
    for k, v in checks.items():
        print(f"{k}: {v}")
    print(f"written to {out}")


if __name__ == "__main__":
    main()
