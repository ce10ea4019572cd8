"""A target run's source model: read from disk each time vs copied from ``ModelCache``, side by side.

The experiment trains every target strategy of a (seed, regime) from the same saved source model.
``finetune(..., models=ModelCache())`` loads it once and hands each run a deep copy plus the RNG
state the load left behind. This script saves all-MiniLM-L6-v2 as a classifier (a stand-in for a
source checkpoint), then per round times one load as a target run does it (seeded, under a fresh
6-class head, SDPA) and one cache hit, in a freshly shuffled order per round. Reported: the median
time of each and the median over rounds of (copy / load); the copy's weights are checked equal.

    python benchmarks/model_cache.py --rounds 5 --threads 1
"""

from __future__ import annotations

import argparse
import platform
import random
import statistics
import tempfile
import time
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--labels", type=int, default=6, help="the new head's classes (TREC: 6)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (0: torch's default)")
    ap.add_argument("--out", default="benchmarks/results/model_cache.json")
    args = ap.parse_args()

    import torch
    import transformers

    from inflora.io import atomic_write_json, versions
    from inflora.models import load_model
    from inflora.training.model_cache import ModelCache
    from inflora.training.parts import load_under_new_head, seed_everything

    transformers.logging.set_verbosity_error()
    if args.threads:
        torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        source = Path(tmp) / "source"
        model, tok = load_model("minilm", num_labels=2)
        model.save_pretrained(source)
        tok.save_pretrained(source)

        def load():
            seed_everything(0)
            return load_under_new_head(str(source), args.labels, "sdpa")

        cache = ModelCache()
        first, _ = cache.get("source", load)
        times = {"load": [], "copy": []}
        ratios = []
        for _ in range(args.rounds):
            got = {}
            for kind in random.sample(list(times), 2):
                start = time.perf_counter()
                m, _ = load() if kind == "load" else cache.get("source", load)
                got[kind] = time.perf_counter() - start
                if kind == "copy":
                    a, b = first.state_dict(), m.state_dict()
                    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
            for kind, t in got.items():
                times[kind].append(t)
            ratios.append(got["copy"] / got["load"])
    result = {
        "rounds": args.rounds,
        "threads": args.threads,
        "loads_by_cache": cache.loads,
        "median_seconds": {k: statistics.median(v) for k, v in times.items()},
        "median_ratio_copy_over_load": statistics.median(ratios),
        "weights_equal": True,
        "machine": platform.machine(),
        "versions": versions(),
        "command": f"python benchmarks/model_cache.py --rounds {args.rounds} --threads {args.threads}",
    }
    atomic_write_json(args.out, result)
    print(f"{'':14}{'median s':>10}")
    for kind, v in result["median_seconds"].items():
        print(f"{kind:14}{v:>10.3f}")
    print(
        f"copy / load (median of rounds): {result['median_ratio_copy_over_load']:.3f}; "
        f"loads by the cache: {cache.loads}"
    )


if __name__ == "__main__":
    main()
