"""Weights-only scan of a checkpoint larger than the scan's memory: time, peak RSS, and equality
with the rules on the model in memory, beside Spectrum's own scanner on the same folder.

Writes a sharded safetensors checkpoint shaped like Qwen2-0.5B (hidden 896, MLP 4864, 14 heads,
2 key/value heads, vocabulary 151936; ``--blocks`` blocks, untied LM head; random N(0, 0.02)
weights, fp32), then, each in a fresh process with the same thread count:

* ``inflora``: ``inflora diagnose --weights-only --rules spectrum-snr --budget layers=2``, timed
  whole (start-up, imports, scan, report), with the process's own peak RSS (``VmHWM`` read by the
  child as it exits) and the peak of a process that imports the same modules and does nothing else;
* ``inflora-in-memory``: the path ``--weights-only`` took before the scan: load the model, then the
  rules on it (``score_without_data``), with the load and the SVDs timed apart; the same process
  checks that the scan's scores equal the in-memory rules' (spectrum-snr, kappa, alpha-hts);
* ``spectrum`` (with ``--spectrum PATH`` to their ``spectrum.py``, not shipped here): their
  ``ModelModifier`` exactly as their ``main()`` drives it, every weight type selected (the dialog's
  default), timed whole; and ``spectrum-blocks``: only the 7 block matrix types inflora reads;
* ``scan_weights`` alone in a process (peak RSS above its resident size after imports).

The issue's bound, peak RSS at most 1.5 x the largest tensor + 400 MB, is checked on the command's
working set (its peak minus the imports' peak) and on its whole peak.

Rounds alternate the order; the headline ratios are medians over rounds of times taken minutes apart
on one machine. The checkpoint is deleted at the end unless ``--keep``.

    flock /work/notes/heavy.lock python benchmarks/weights_scan.py --blocks 16 \\
        --spectrum /tmp/spectrum/spectrum.py --out benchmarks/results/weights_scan.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))
QWEN2_05B = dict(
    hidden_size=896,
    intermediate_size=4864,
    num_attention_heads=14,
    num_key_value_heads=2,
    vocab_size=151936,
    max_position_embeddings=32768,
    tie_word_embeddings=False,
)
BLOCK_TYPES = [
    "self_attn.q_proj",
    "self_attn.k_proj",
    "self_attn.v_proj",
    "self_attn.o_proj",
    "mlp.gate_proj",
    "mlp.up_proj",
    "mlp.down_proj",
]
WEIGHT_RULES = ["spectrum-snr", "kappa", "alpha-hts"]


# --------------------------------------------------------------------------- the checkpoint


def write_checkpoint(folder: Path, blocks: int, shard_mb: int, vocab: int, seed: int = 0) -> dict:
    """Shards of at most ``shard_mb`` MB (a larger tensor gets its own), written one shard at a time,
    with MiniLM's tokenizer beside them (the in-memory path loads a tokenizer; its vocabulary does
    not matter to the weight rules)."""
    import torch
    from safetensors.torch import save_file
    from transformers import AutoModelForCausalLM, AutoTokenizer, Qwen2Config

    from inflora.models import resolve_model_path

    config = Qwen2Config(num_hidden_layers=blocks, **{**QWEN2_05B, "vocab_size": vocab})
    with torch.device("meta"):
        shapes = {k: tuple(v.shape) for k, v in AutoModelForCausalLM.from_config(config).state_dict().items()}
    folder.mkdir(parents=True, exist_ok=True)
    config.save_pretrained(folder)
    AutoTokenizer.from_pretrained(resolve_model_path("minilm")).save_pretrained(folder)
    groups, size = [[]], 0
    for name, shape in shapes.items():
        nbytes = 4 * _numel(shape)
        if groups[-1] and size + nbytes > shard_mb * 1e6:
            groups.append([])
            size = 0
        groups[-1].append(name)
        size += nbytes
    gen = torch.Generator().manual_seed(seed)
    weight_map = {}
    for i, names in enumerate(groups):
        file = f"model-{i + 1:05d}-of-{len(groups):05d}.safetensors"
        save_file({n: _tensor(shapes[n], gen) for n in names}, str(folder / file), metadata={"format": "pt"})
        weight_map.update({n: file for n in names})
    total = sum(4 * _numel(s) for s in shapes.values())
    (folder / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2)
    )
    largest = max(shapes, key=lambda n: _numel(shapes[n]))
    return {
        "blocks": blocks,
        "files": len(groups),
        "bytes": total,
        "params": total // 4,
        "largest_tensor": {"name": largest, "shape": list(shapes[largest]), "bytes": 4 * _numel(shapes[largest])},
        "largest_block_matrix_bytes": 4 * QWEN2_05B["hidden_size"] * QWEN2_05B["intermediate_size"],
    }


def _numel(shape) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


def _tensor(shape, gen):
    import torch

    if len(shape) == 1:
        return torch.ones(shape)
    return torch.randn(shape, generator=gen) * 0.02


# --------------------------------------------------------------------------- child processes

PEAK_WRAPPER = """
import atexit, importlib, json, runpy, sys
out, how, target, *args = sys.argv[1:]
def report():
    hwm = next(int(ln.split()[1]) for ln in open("/proc/self/status") if ln.startswith("VmHWM:"))
    json.dump({"vmhwm_kib": hwm, "modules": list(sys.modules)}, open(out, "w"))
atexit.register(report)
if how == "-m":
    sys.argv = [target, *args]
    runpy.run_module(target, run_name="__main__", alter_sys=True)
elif how == "-c":
    sys.argv = ["-c", *args]
    exec(compile(target, "<driver>", "exec"), {"__name__": "__main__"})
elif how == "path":
    sys.argv = [target, *args]
    runpy.run_path(target, run_name="__main__")
else:  # "imports": only the modules another run loaded, in its order
    for name in json.load(open(target))["modules"]:
        try:
            importlib.import_module(name)
        except BaseException:
            pass
"""


def timed_child(how: str, target: str, args: list[str], env: dict, baseline: bool = True) -> dict:
    """Wall time of one fresh process, timed whole, and its own peak RSS: the child reports its
    ``VmHWM`` from ``/proc/self/status`` as it exits (``wait4``'s ``ru_maxrss`` would carry the
    parent's peak into the child across fork). With ``baseline``, a second child imports exactly the
    modules the first had loaded and nothing else; the run's peak minus that is its working set."""
    with tempfile.TemporaryDirectory() as tmp:
        peak_file = Path(tmp) / "peak.json"
        t0 = time.perf_counter()
        proc = subprocess.run(
            [sys.executable, "-c", PEAK_WRAPPER, str(peak_file), how, target, *args],
            env=env,
            cwd=REPO,
            capture_output=True,
            text=True,
            check=False,
        )
        wall = time.perf_counter() - t0
        if proc.returncode != 0:
            raise SystemExit(f"{how} {target[:60]} … failed:\n{proc.stderr[-3000:]}")
        peak = json.loads(peak_file.read_text())
        run = {"seconds": wall, "peak_rss_mib": peak["vmhwm_kib"] / 1024, "stdout": proc.stdout}
        if baseline:
            imports = subprocess.run(
                [sys.executable, "-c", PEAK_WRAPPER, str(peak_file), "imports", str(peak_file)],
                env=env,
                cwd=REPO,
                capture_output=True,
                text=True,
                check=True,
            )
            del imports
            run["imports_peak_rss_mib"] = json.loads(peak_file.read_text())["vmhwm_kib"] / 1024
            run["working_set_mib"] = run["peak_rss_mib"] - run["imports_peak_rss_mib"]
    return run


def child_env(threads: int) -> dict:
    return {
        **os.environ,
        "PYTHONPATH": str(REPO / "src"),
        "HF_HUB_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "OMP_NUM_THREADS": str(threads),
        "MKL_NUM_THREADS": str(threads),
    }


def inflora_cli(folder: Path, env: dict, out: Path) -> dict:
    args = [
        "diagnose",
        "--model",
        str(folder),
        "--weights-only",
        "--rules",
        "spectrum-snr",
        "--budget",
        "layers=2",
        "--out",
        str(out),
    ]
    run = timed_child("-m", "inflora", args, env)
    scan = json.loads((out / "rules.json").read_text())
    return {
        **_peaks(run),
        "seconds": run["seconds"],
        "scan_seconds": scan["scan"]["seconds"],
        "block_seconds": scan["scan"]["block_seconds"],
        "snr": scan["rules"]["spectrum-snr"]["per_module"],
    }


def _peaks(run: dict) -> dict:
    return {k: run[k] for k in ("peak_rss_mib", "imports_peak_rss_mib", "working_set_mib")}


SPECTRUM_DRIVER = """
import importlib.util, json, sys
path, folder, out, only_blocks = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4] == "1"
spec = importlib.util.spec_from_file_location("spectrum", path)
spectrum = importlib.util.module_from_spec(spec)
spec.loader.exec_module(spectrum)
m = spectrum.ModelModifier(model_name=folder, batch_size=1)       # as their main() does
types = m.sort_weight_types(m.get_weight_types())                 # the dialog's default: all selected
if only_blocks:
    types = [t for t in types if t in {blocks}]
m.assess_layers_snr(types)
json.dump({{n: v["snr"] for n, v in m.layer_snr.items()}}, open(out, "w"))
"""


def spectrum_run(path: Path, folder: Path, env: dict, out: Path, only_blocks: bool) -> dict:
    driver = SPECTRUM_DRIVER.format(blocks=repr(set(BLOCK_TYPES)))
    args = [str(path), str(folder), str(out), "1" if only_blocks else "0"]
    run = timed_child("-c", driver, args, dict(env, PYTHONPATH=""))
    snr = json.loads(out.read_text())
    return {**_peaks(run), "seconds": run["seconds"], "matrices": len(snr), "snr": snr}


def child_mode(argv: list[str]) -> None:
    """``--child in-memory FOLDER`` or ``--child memory FOLDER``: one measurement, printed as JSON."""
    mode, folder = argv[0], argv[1]
    import torch  # noqa: F401  (imports before the baseline)
    import transformers

    from inflora.strategies.budget import Budget
    from inflora.weight_scan import scan_weights

    transformers.logging.set_verbosity_error()
    if mode == "memory":
        sys.path.insert(0, str(REPO / "benchmarks"))
        from _memory import peak_extra_memory

        import peft  # noqa: F401  (what the scan imports, so the working set is the scan's own)
        import scipy.stats  # noqa: F401

        from inflora.models import meta_model

        meta_model(folder, "causal-lm")
        print(
            "RESULT " + json.dumps(peak_extra_memory(lambda: scan_weights(folder, ["spectrum-snr"], Budget(layers=2))))
        )
        return
    print("RESULT " + json.dumps(in_memory_check(folder, Budget(layers=2))))


def in_memory_check(folder: str, budget) -> dict:
    """The old ``--weights-only`` path (load, then the rules on the model) timed in parts, the scan's
    scores against it, and the SVD of each matrix type as stored against its tall orientation."""
    from inflora.diagnosis import score_without_data
    from inflora.models import load_model
    from inflora.weight_scan import scan_weights

    t0 = time.perf_counter()
    model, _ = load_model(folder, num_labels=2)
    t1 = time.perf_counter()
    memory = score_without_data(model, ["spectrum-snr"], budget)
    t2 = time.perf_counter()
    memory = score_without_data(model, WEIGHT_RULES, budget)
    scanned = scan_weights(folder, WEIGHT_RULES, budget)
    diffs = {r: _max_diff(scanned["rules"][r], memory["rules"][r]) for r in WEIGHT_RULES}
    return {
        "load_seconds": t1 - t0,
        "svd_seconds": t2 - t1,
        "max_abs_diff": diffs,
        "same_selection": all(scanned["rules"][r]["selected"] == memory["rules"][r]["selected"] for r in WEIGHT_RULES),
        "orientation": orientation_times(model),
    }


def _max_diff(a: dict, b: dict) -> dict:
    raw = max(abs(x - y) for x, y in zip(a["raw"], b["raw"]))
    rel = max(
        abs(a["per_module"][k] - b["per_module"][k]) / max(abs(b["per_module"][k]), 1e-30) for k in b["per_module"]
    )
    return {"block_score": raw, "per_module_relative": rel, "modules": len(b["per_module"])}


def orientation_times(model) -> dict:
    """Seconds of ``svdvals`` on each of block 0's matrices as stored, and on its tall orientation."""
    import torch

    from inflora.models import get_blocks, hf_model
    from inflora.select import block_matrices

    out = {}
    for name, w in block_matrices(get_blocks(hf_model(model)))[0].items():
        w = w.detach()
        tall = w if w.shape[0] >= w.shape[1] else w.T
        out[name] = {
            "shape": list(w.shape),
            "as_stored": _best(lambda m=w: torch.linalg.svdvals(m)),
            "tall": _best(lambda m=tall: torch.linalg.svdvals(m)),
        }
    return out


def _best(fn, repeats: int = 3) -> float:
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def result_of(run: dict) -> dict:
    line = next(ln for ln in run["stdout"].splitlines() if ln.startswith("RESULT "))
    return {
        **json.loads(line[len("RESULT ") :]),
        "seconds": run["seconds"],
        "process_peak_rss_mib": run["peak_rss_mib"],
    }


def own_child(mode: str, folder: Path, env: dict) -> dict:
    """This script's ``--child MODE FOLDER`` in a fresh process, its RESULT line and its own peak."""
    return result_of(timed_child("path", __file__, ["--child", mode, str(folder)], env, baseline=False))


# --------------------------------------------------------------------------- the run


def arms(args, folder: Path, env: dict, tmp: Path) -> dict:
    out = {"inflora": lambda: inflora_cli(folder, env, tmp / "inflora")}
    if args.spectrum:
        out["spectrum"] = lambda: spectrum_run(args.spectrum, folder, env, tmp / "spectrum.json", False)
        out["spectrum-blocks"] = lambda: spectrum_run(args.spectrum, folder, env, tmp / "blocks.json", True)
    return out


def timed_rounds(args, folder: Path, env: dict, tmp: Path) -> list[dict]:
    runs = arms(args, folder, env, tmp)
    rounds = []
    for r in range(args.rounds):
        order = list(runs) if r % 2 == 0 else list(runs)[::-1]
        rounds.append({name: runs[name]() for name in order})
        print(f"round {r + 1}: " + "  ".join(f"{k} {v['seconds']:.1f}s" for k, v in rounds[-1].items()), flush=True)
    return rounds


def snr_agreement(inflora: dict, spectrum: dict, block_list: str = "model.layers") -> dict:
    """inflora's per-module SNR against Spectrum's for the same matrices (relative difference)."""
    ours = {f"{block_list}.{k}": v for k, v in inflora.items()}
    common = sorted(set(ours) & set(spectrum))
    rel = [abs(ours[k] - spectrum[k]) / abs(spectrum[k]) for k in common]
    return {"modules": len(common), "max_relative_diff": max(rel), "median_relative_diff": statistics.median(rel)}


def summarize(info: dict, check: dict, memory: dict, rounds: list[dict]) -> dict:
    med = {arm: statistics.median(r[arm]["seconds"] for r in rounds) for arm in rounds[0]}
    last = rounds[-1]
    gb = info["bytes"] / 1e9
    cli_peak = max(r["inflora"]["peak_rss_mib"] for r in rounds)
    cli_working_set = max(r["inflora"]["working_set_mib"] for r in rounds)
    bound = (1.5 * info["largest_tensor"]["bytes"] + 400e6) / 2**20
    scores_equal = all(
        d["block_score"] <= 1e-6 and d["per_module_relative"] <= 1e-6 for d in check["max_abs_diff"].values()
    )
    out = {
        "median_seconds": med,
        "speedup_vs_spectrum": {
            a: statistics.median(r[a]["seconds"] / r["inflora"]["seconds"] for r in rounds)
            for a in med
            if a != "inflora"
        },
        "inflora_scan_seconds_per_gb": statistics.median(r["inflora"]["scan_seconds"] for r in rounds) / gb,
        "inflora_whole_seconds_per_gb": med["inflora"] / gb,
        "inflora_block_seconds": last["inflora"]["block_seconds"],
        "peak_rss_mib": {a: max(r[a]["peak_rss_mib"] for r in rounds) for a in med},
        "imports_peak_rss_mib": {a: max(r[a]["imports_peak_rss_mib"] for r in rounds) for a in med},
        "working_set_mib": {a: max(r[a]["working_set_mib"] for r in rounds) for a in med},
        "rss_bound_mib": bound,
        "within_rss_bound": cli_working_set <= bound,
        "within_rss_bound_counting_imports": cli_peak <= bound,
        "scores_equal_within_1e-6": scores_equal and check["same_selection"],
        "scan_working_set_mib": memory["peak_extra_mib"],
        "scan_working_set_over_largest_block_matrix": memory["peak_extra_mib"]
        * 2**20
        / info["largest_block_matrix_bytes"],
        "in_memory": check,
    }
    if "spectrum" in last:
        out["snr_vs_spectrum"] = snr_agreement(last["inflora"]["snr"], last["spectrum"]["snr"])
        out["spectrum_matrices"] = {a: last[a]["matrices"] for a in ("spectrum", "spectrum-blocks")}
    return out


def print_table(info: dict, s: dict) -> None:
    print(
        f"\ncheckpoint: {info['blocks']} blocks, {info['params'] / 1e6:.0f} M parameters, "
        f"{info['bytes'] / 1e9:.2f} GB fp32 in {info['files']} shards"
    )
    print(f"{'arm':<18}{'seconds':>9}{'vs inflora':>12}{'peak RSS':>10}{'imports':>9}{'working set':>13}")
    for arm, sec in s["median_seconds"].items():
        ratio = s["speedup_vs_spectrum"].get(arm)
        print(
            f"{arm:<18}{sec:>9.1f}{(f'{ratio:.2f}x' if ratio else '1'):>12}{s['peak_rss_mib'][arm]:>10.0f}"
            f"{s['imports_peak_rss_mib'][arm]:>9.0f}{s['working_set_mib'][arm]:>13.0f}"
        )
    print("(MiB: the process's own VmHWM; imports: a process importing the same modules only)")
    m = s["in_memory"]
    print(
        f"old path in process: load {m['load_seconds']:.1f} s + SVDs {m['svd_seconds']:.1f} s "
        f"(peak RSS {m['process_peak_rss_mib']:.0f} MiB)"
    )
    slow = {k.split(".")[-1]: f"{v['as_stored'] / v['tall']:.1f}x" for k, v in m["orientation"].items()}
    print(f"SVD as stored / tall orientation, block 0: {slow}")
    print(
        f"scan: {s['inflora_scan_seconds_per_gb']:.2f} s/GB (whole command {s['inflora_whole_seconds_per_gb']:.2f} s/GB)"
    )
    print(
        f"bound 1.5 x largest tensor + 400 MB = {s['rss_bound_mib']:.0f} MiB: working set "
        f"{'within' if s['within_rss_bound'] else 'OVER'}, whole peak with imports "
        f"{'within' if s['within_rss_bound_counting_imports'] else 'OVER'}"
    )
    print(
        f"scan_weights alone, in process: {s['scan_working_set_mib']:.0f} MiB = "
        f"{s['scan_working_set_over_largest_block_matrix']:.2f} x the largest block matrix"
    )
    diffs = {r: f"{d['block_score']:.1e}/{d['per_module_relative']:.1e}" for r, d in m["max_abs_diff"].items()}
    print(
        f"scan vs in memory (score / per-module rel.): {diffs}; "
        f"{'equal' if s['scores_equal_within_1e-6'] else 'NOT equal'} within 1e-6"
    )
    if "snr_vs_spectrum" in s:
        print(
            f"per-module SNR vs Spectrum: max rel. diff {s['snr_vs_spectrum']['max_relative_diff']:.1e} "
            f"over {s['snr_vs_spectrum']['modules']} matrices"
        )


def main() -> None:
    if sys.argv[1:2] == ["--child"]:
        return child_mode(sys.argv[2:])
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--blocks", type=int, default=16)
    ap.add_argument("--shard-mb", type=int, default=150)
    ap.add_argument("--vocab", type=int, default=QWEN2_05B["vocab_size"], help="smaller only to try the script")
    ap.add_argument("--folder", type=Path, default=Path(tempfile.gettempdir()) / "inflora-weights-scan")
    ap.add_argument("--spectrum", type=Path, default=None, help="path to Spectrum's spectrum.py (not shipped)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--keep", action="store_true", help="keep the checkpoint")
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks/results/weights_scan.json")
    args = ap.parse_args()
    env = child_env(args.threads)
    try:
        info = write_checkpoint(args.folder, args.blocks, args.shard_mb, args.vocab)
        print(f"wrote {info['files']} shards, {info['bytes'] / 1e9:.2f} GB -> {args.folder}", flush=True)
        check = own_child("in-memory", args.folder, env)
        memory = own_child("memory", args.folder, env)
        with tempfile.TemporaryDirectory() as tmp:
            rounds = timed_rounds(args, args.folder, env, Path(tmp))
    finally:
        if not args.keep:
            shutil.rmtree(args.folder, ignore_errors=True)
    summary = summarize(info, check, memory, rounds)
    print_table(info, summary)
    for r in rounds:
        for arm in r.values():
            arm.pop("snr", None)
    result = {
        "what": __doc__.split("\n")[0],
        "checkpoint": info,
        **summary,
        "rounds": rounds,
        "config": {k: str(v) for k, v in vars(args).items()},
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "note": "shared 2-core CPU box, other jobs running; ratios side by side",
        },
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"-> {args.out}")


if __name__ == "__main__":
    main()
