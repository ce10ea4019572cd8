"""The paper's claims, judged from the numbers: supported / not supported / inconclusive.

A comparison is *supported* when the 95% interval of the paired difference over seeds lies on the
claimed side of zero, *not supported* when it lies on the other side, else *inconclusive*
(``stats.verdict``). Thresholds for the gradient-ratio claim are stated in its text.
"""

from __future__ import annotations


import numpy as np

from .saturation import judge_confident_mistakes
from .stats import paired, summary, verdict


def _row(res: dict, regime: str, strategy: str) -> dict | None:
    return next((r for r in res["table"] if r["regime"] == regime and r["strategy"] == strategy), None)


def _diff(res, regime, a, b, metric) -> dict | None:
    ra, rb = _row(res, regime, a), _row(res, regime, b)
    if ra is None or rb is None:
        return None
    return paired(ra[metric]["per_seed"], rb[metric]["per_seed"])


def _fmt_diff(name: str, d: dict) -> str:
    lo, hi = d["ci"]
    return f"{name}: {100 * d['mean']:+.2f} points (95% CI {100 * lo:+.2f} … {100 * hi:+.2f}, n={d['n']})"


def _combine(verdicts: list[str]) -> str:
    if verdicts and all(v == "supported" for v in verdicts):
        return "supported"
    if any(v == "not supported" for v in verdicts):
        return "not supported"
    return "inconclusive"


def _compare(res, regime, pairs, metric, direction) -> tuple[str, str]:
    diffs = [(f"{a} − {b}", _diff(res, regime, a, b, metric)) for a, b in pairs]
    diffs = [(n, d) for n, d in diffs if d is not None]
    if not diffs:
        return "inconclusive", "the needed runs are missing"
    return _combine([verdict(d["ci"], direction) for _, d in diffs]), "; ".join(_fmt_diff(n, d) for n, d in diffs)


def judge(res: dict, metric: str = "test") -> list[dict]:
    """One entry per claim: {claim, verdict, evidence}."""
    out = []
    v, e = _compare(res, "over", [("lora-inflection", "lora-all"), ("lora-inflection", "full")], metric, +1)
    out.append(
        {
            "id": "a",
            "claim": "OVER benefits from inflection-layer LoRA vs uniform LoRA and full fine-tuning",
            "verdict": v,
            "evidence": e,
        }
    )
    v, e = _compare(res, "under", [("lora-inflection", "full")], metric, -1)
    out.append(
        {
            "id": "b",
            "claim": "UNDER degrades with inflection-layer LoRA (vs full fine-tuning)",
            "verdict": v,
            "evidence": e,
        }
    )
    out.append(_same_band(res))
    out.append(_grad_ratio(res))
    out.append(_low_cka(res))
    out.append(judge_confident_mistakes(res))
    for regime in ("under", "over"):
        v, e = _compare(res, regime, [("lora-inflection", "lora-random")], metric, +1)
        out.append(
            {
                "id": f"f-{regime}",
                "claim": f"{regime.upper()}: lora-inflection beats lora-random (the choice of layers matters)",
                "verdict": v,
                "evidence": e,
            }
        )
    return out


def _same_band(res: dict) -> dict:
    seeds = {s: b for s, b in res["bands"].items() if "under" in b and "over" in b}
    if not seeds:
        return {
            "id": "c",
            "claim": "the band is the same for UNDER and OVER",
            "verdict": "inconclusive",
            "evidence": "no paired diagnoses",
        }
    same = {s: sorted(b["under"]["band"]) == sorted(b["over"]["band"]) for s, b in seeds.items()}
    ev = "; ".join(
        f"seed {s}: UNDER {seeds[s]['under']['band']} vs OVER {seeds[s]['over']['band']}" for s in sorted(seeds)
    )
    v = "supported" if all(same.values()) else "not supported" if not any(same.values()) else "inconclusive"
    return {"id": "c", "claim": "the band is the same for UNDER and OVER", "verdict": v, "evidence": ev}


def _grad_ratio(res: dict) -> dict:
    """Supported when OVER's mean activation gradient is ≤ 1/5 of UNDER's under both shallow and full
    (about an order of magnitude; the paper reports ≈1/20); not supported when it is ≥ 1/2 under both."""
    ratios = res.get("grad_ratio", {})
    claim = "OVER activation gradients are about an order of magnitude smaller than UNDER's (shallow, full)"
    if not ratios:
        return {"id": "d", "claim": claim, "verdict": "inconclusive", "evidence": "the needed runs are missing"}
    means = {s: r["over_over_under"]["mean"] for s, r in ratios.items()}
    ev = "; ".join(
        f"{s}: OVER/UNDER = {m:.3g} (UNDER {ratios[s]['under_mean']:.3g}, OVER {ratios[s]['over_mean']:.3g})"
        for s, m in means.items()
    )
    if all(m <= 0.2 for m in means.values()):
        v = "supported"
    elif all(m >= 0.5 for m in means.values()):
        v = "not supported"
    else:
        v = "inconclusive"
    return {"id": "d", "claim": claim, "verdict": v, "evidence": ev}


def _low_cka(res: dict) -> dict:
    """UNDER: the lower half of the layers changes more (ΔCKA) under full FT than under every other
    strategy: per seed, full's low-layer ΔCKA minus the largest of the others, judged by its interval."""
    claim = "under UNDER, low-layer ΔCKA rises only when the full pathway is trainable"
    full = _row(res, "under", "full")
    others = [r for r in res["table"] if r["regime"] == "under" and r["strategy"] != "full"]
    if full is None or not others:
        return {"id": "e", "claim": claim, "verdict": "inconclusive", "evidence": "the needed runs are missing"}
    f = full["low_layer_delta_cka"]
    seeds = [s for s in f if all(s in o["low_layer_delta_cka"] for o in others)]
    diffs = [f[s] - max(o["low_layer_delta_cka"][s] for o in others) for s in seeds]
    d = summary(diffs)
    means = ", ".join(
        f"{r['strategy']} {np.mean(list(r['low_layer_delta_cka'].values())):.3g}" for r in [full, *others]
    )
    ev = (
        f"low-layer ΔCKA (mean over seeds): {means}; full − max(others) per seed: {d['mean']:.3g} "
        f"(95% CI {d['ci'][0]:.3g} … {d['ci'][1]:.3g}, n={d['n']})"
    )
    return {"id": "e", "claim": claim, "verdict": verdict(d["ci"], +1), "evidence": ev}
