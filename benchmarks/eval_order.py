"""Evaluation in plain vs length-sorted batch order, side by side in one run.

``accuracy()`` and the ΔCKA feature pass walk a split in shortest-first order (``by_length=True``):
each dynamically padded batch then holds sentences of similar length, so far fewer pad tokens go
through the model. Padding is masked, so predictions must not change; this script checks that and
measures the time ratio on all-MiniLM-L6-v2 over the Rotten Tomatoes test split.

Timing: after one warm-up pass of each order, ``--rounds`` rounds each time one full pass per order,
in a freshly shuffled order per round. Reported: the median pass time per order, the median over
rounds of (sorted / plain), the padded-token count of each order, and whether every prediction agrees.

    python benchmarks/eval_order.py --rounds 5 --threads 1
"""

from __future__ import annotations

import argparse
import os
import platform
import random
import statistics
import sys
import time


def predictions(model, split, batch_size: int, by_length: bool) -> dict[int, int]:
    """Row index -> predicted label, whatever order the batches came in."""
    import torch

    order = split.row_order(by_length)
    preds, k = {}, 0
    with torch.no_grad():
        for batch in split.batches(batch_size, by_length=by_length):
            batch.pop("labels")
            for p in model(**batch).logits.argmax(-1).tolist():
                preds[order[k]] = p
                k += 1
    return preds


def padded_tokens(split, batch_size: int, by_length: bool) -> int:
    return sum(b["input_ids"].numel() for b in split.batches(batch_size, by_length=by_length))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--split", default="test")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--batch-size", type=int, default=128, help="the default eval batch size of finetune")
    ap.add_argument("--max-length", type=int, default=64)
    ap.add_argument("--threads", type=int, default=1, help="torch threads (0: torch's default)")
    ap.add_argument("--data-dir", default=None, help="data folder (default: $INFLORA_DATA_DIR)")
    ap.add_argument("--out", default="benchmarks/results/eval_order.json")
    args = ap.parse_args()

    import torch
    import transformers

    from inflora.data import EncodedSplit, load_task
    from inflora.io import atomic_write_json, versions
    from inflora.models import load_model

    transformers.logging.set_verbosity_error()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model, tok = load_model("minilm", num_labels=2, attn_implementation="sdpa")
    model.eval()
    split = EncodedSplit(load_task("rotten_tomatoes", args.split, args.data_dir), tok, args.max_length)
    orders = {"plain": False, "sorted": True}
    load_before = os.getloadavg()
    reference = {name: predictions(model, split, args.batch_size, flag) for name, flag in orders.items()}  # warm-up
    times = {name: [] for name in orders}
    rng = random.Random(0)
    for r in range(args.rounds):
        names = list(orders)
        rng.shuffle(names)
        for name in names:
            t0 = time.perf_counter()
            predictions(model, split, args.batch_size, orders[name])
            times[name].append(time.perf_counter() - t0)
        print(f"round {r + 1}/{args.rounds}: " + "  ".join(f"{n} {times[n][-1]:.2f}s" for n in orders), flush=True)
    ratios = [s / p for s, p in zip(times["sorted"], times["plain"])]
    result = {
        "config": vars(args),
        "rows": len(split),
        "median_seconds": {n: statistics.median(t) for n, t in times.items()},
        "seconds": times,
        "sorted_over_plain": statistics.median(ratios),
        "sorted_over_plain_per_round": ratios,
        "padded_tokens": {n: padded_tokens(split, args.batch_size, f) for n, f in orders.items()},
        "real_tokens": sum(len(x) for x in split.ids),
        "same_predictions": reference["plain"] == reference["sorted"],
        "machine": {
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
            "threads": torch.get_num_threads(),
            "load_before": load_before,
            "load_after": os.getloadavg(),
        },
        "versions": versions(),
    }
    atomic_write_json(args.out, result)
    print(
        f"sorted/plain time {result['sorted_over_plain']:.2f}x (median over {args.rounds} rounds); padded tokens "
        f"{result['padded_tokens']['sorted']:,} vs {result['padded_tokens']['plain']:,} (real {result['real_tokens']:,}); "
        f"same predictions: {result['same_predictions']}; wrote {args.out}"
    )
    if not result["same_predictions"]:
        sys.exit(1)


if __name__ == "__main__":
    main()
