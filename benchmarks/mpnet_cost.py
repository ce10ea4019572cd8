"""What a training step and an oracle arm cost on MPNet-base (12 blocks) against MiniLM (6), side by side.

Both models (``minilm`` and ``mpnet-base``, installed by ``make mpnet``) get the arms a per-block oracle
trains: ``head`` (its baseline), LoRA on one block (a single-block arm) and LoRA on every block but one
(a leave-one-out arm, about ``lora-all``'s cost); each with the AdamW set-up of ``inflora finetune`` on the
same fixed Rotten Tomatoes train batches (batch 32, at most 64 tokens; eager attention for both,
since MPNet has no SDPA). Each round steps every (model, arm) once on the same batch in a freshly
shuffled order, so the compared steps are seconds apart and a busy machine slows all of them alike:
the reported figure is the median over rounds of MPNet's step time / MiniLM's for the same arm.
An evaluation batch (128 examples, no gradient) is timed the same way. The cost of one oracle arm is
then (steps per epoch × epochs × step time) + (evaluated examples / 128 × eval time).

    python benchmarks/mpnet_cost.py --rounds 2 --threads 1
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import random
import statistics
import time

from strategy_cost import step  # noqa: E402  (benchmarks/ is on sys.path when run as a script)

MODELS = ("minilm", "mpnet-base")


def arms(n_blocks: int) -> dict[str, tuple[str, list[int] | None]]:
    """Arm name -> (strategy, blocks): the kinds of arm an oracle and a K-block comparison train."""
    return {
        "head": ("head", None),
        "lora-1-block": ("lora-inflection", [0]),
        "lora-leave-one-out": ("lora-inflection", list(range(1, n_blocks))),
    }


def build(args):
    import torch
    import transformers

    from inflora.data import EncodedSplit, load_task
    from inflora.models import load_model, num_layers
    from inflora.strategies import StrategyOptions, apply_strategy, count_parameters
    from inflora.training.parts import build_optimizer

    transformers.logging.set_verbosity_error()
    if args.threads:
        torch.set_num_threads(args.threads)
    runs, batches, evals, info = {}, {}, {}, {}
    for name in MODELS:
        torch.manual_seed(0)
        base, tok = load_model(name, num_labels=2, attn_implementation="eager")
        encoded = EncodedSplit(load_task("rotten_tomatoes", "train", args.data_dir), tok, args.max_length)
        batches[name] = list(encoded.batches(args.batch_size, seed=0))[: args.rounds + 1]
        evals[name] = next(iter(encoded.batches(128, seed=1)))
        info[name] = {"blocks": num_layers(base), "total_params": count_parameters(base)[1]}
        for arm, (strategy, layers) in arms(num_layers(base)).items():
            torch.manual_seed(0)
            applied = apply_strategy(strategy, copy.deepcopy(base), StrategyOptions(layers=layers, seed=0))
            model = applied.model.train()
            runs[(name, arm)] = {
                "model": model,
                "optimizer": build_optimizer(model, applied.lr, 0.01),
                "trainable_params": count_parameters(model)[0],
            }
        runs[(name, "eval")] = {"model": base.eval()}
    return runs, batches, evals, info


def eval_batch(run, batch) -> None:
    import torch

    with torch.no_grad():
        run["model"](**{k: v for k, v in batch.items() if k != "labels"})


def measure(args) -> dict:
    runs, batches, evals, info = build(args)
    keys = list(runs)
    for key in keys:  # warm-up
        _one(runs[key], key, batches[key[0]][0], evals[key[0]])
    times = {k: [] for k in keys}
    rng = random.Random(0)
    for r in range(args.rounds):
        order = keys[:]
        rng.shuffle(order)
        for key in order:
            t0 = time.perf_counter()
            _one(runs[key], key, batches[key[0]][r + 1], evals[key[0]])
            times[key].append(time.perf_counter() - t0)
        print(
            f"round {r + 1}/{args.rounds}: " + "  ".join(f"{k[0]}/{k[1]} {times[k][-1]:.2f}s" for k in keys), flush=True
        )
    out = {}
    for arm in {k[1] for k in keys}:
        a, b = times[("minilm", arm)], times[("mpnet-base", arm)]
        out[arm] = {
            "minilm_s": statistics.median(a),
            "mpnet-base_s": statistics.median(b),
            "mpnet_over_minilm": statistics.median(y / x for x, y in zip(a, b)),
            "trainable_params": {m: runs[(m, arm)].get("trainable_params") for m in MODELS},
        }
    return {"per_arm": out, "models": info}


def _one(run, key, batch, eval_b) -> None:
    if key[1] == "eval":
        eval_batch(run, eval_b)
    else:
        step(run, batch)


def arm_cost(
    per_arm: dict, arm: str, model: str, train_examples: int, epochs: int, eval_examples: int, batch_size: int
) -> float:
    """Seconds for one oracle arm: its training steps plus scoring validation and test once per epoch / at the end."""
    steps = -(-train_examples // batch_size) * epochs
    return steps * per_arm[arm][f"{model}_s"] + eval_examples / 128 * per_arm["eval"][f"{model}_s"]


def table(result: dict) -> str:
    lines = ["| arm | MiniLM s/step | MPNet s/step | MPNet / MiniLM |", "|---|---:|---:|---:|"]
    for arm, r in result["per_arm"].items():
        lines.append(f"| {arm} | {r['minilm_s']:.2f} | {r['mpnet-base_s']:.2f} | {r['mpnet_over_minilm']:.1f}× |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--max-length", type=int, default=64)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--data-dir", default=None)
    ap.add_argument("--train-examples", type=int, default=1000, help="for the per-arm estimate")
    ap.add_argument("--out", default="benchmarks/results/mpnet_cost.json")
    args = ap.parse_args()
    load_before, started = os.getloadavg(), time.time()
    result = measure(args)
    # One oracle arm at the reduced budget: N RT examples, 1 epoch, RT validation + test (2,132) once.
    result["arm_seconds"] = {
        m: {
            arm: arm_cost(result["per_arm"], arm, m, args.train_examples, 1, 2132, args.batch_size)
            for arm in ("lora-1-block", "lora-leave-one-out")
        }
        for m in MODELS
    }
    result.update(
        {
            "config": vars(args),
            "wall_seconds": time.time() - started,
            "load_before": load_before,
            "load_after": os.getloadavg(),
            "cpu_count": os.cpu_count(),
            "platform": platform.platform(),
        }
    )
    print(table(result))
    print(json.dumps(result["arm_seconds"], indent=1))
    with open(args.out, "w") as f:
        json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()
