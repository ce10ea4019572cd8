"""Rules side by side: which blocks each rule chooses at one budget, and how much the choices overlap."""

from __future__ import annotations


def selection_rows(result: dict, num_layers: int) -> list[dict]:
    """One row per rule: its inputs, the end it selects, a ● per chosen block, rank and LoRA size."""
    rows = []
    for name, r in result["rules"].items():
        row = {"rule": name, "needs": ", ".join(r["needs"]) or "nothing", "selects": r["direction"]}
        row.update({f"b{i}": "●" if i in r["selected"] else "·" for i in range(num_layers)})
        row.update({"r": r.get("r", ""), "LoRA params": r.get("lora_params", "")})
        rows.append(row)
    return rows


def overlap_rows(result: dict) -> list[dict]:
    names = list(result["overlap"])
    return [{"Jaccard": a, **{b: result["overlap"][a][b] for b in names}} for a in names]


def add_rules_section(rep, result: dict, num_layers: int) -> None:
    b = result["budget"]
    spend = f", {b['params']:,} LoRA parameters each (rank adjusted)" if b.get("params") else ""
    rep.heading(f"Rules side by side (K = {result['k']} blocks{spend})")
    rep.text(
        "Each rule's choice at the same budget (● = chosen block). `selects` is the end of the rule's score "
        "that is chosen; `needs` says what it reads (weights only, a forward pass, or gradients). "
        "The SKI-family band is trimmed or extended by SKI score to K blocks; `all` keeps every block."
    )
    rep.table(selection_rows(result, num_layers))
    rep.text("Overlap of the chosen sets (Jaccard |A∩B|/|A∪B|; 1 = the same blocks).")
    rep.table(overlap_rows(result), digits=2)
    rep.text("Raw block scores (weight rules: mean within-type percentile over the blocks; n/a = no order).")
    rep.table(
        [
            {"rule": n, **{f"b{i}": float("nan") if v is None else v for i, v in enumerate(r["raw"])}}
            for n, r in result["rules"].items()
        ],
        digits=3,
    )


def add_scan_section(rep, scan: dict) -> None:
    """What a weights-only scan read and how long each block took (read + SVD)."""
    rep.heading("Weights-only scan")
    others = ", ".join(f"`{p}` ({n} blocks)" for p, n in scan["other_block_lists"].items())
    rep.text(
        f"Read {scan['matrices']} block matrices of `{scan['block_list']}` one tensor at a time from "
        f"{scan['files']} safetensors file(s) ({scan['bytes'] / 1e9:.2f} GB) in {scan['seconds']:.1f} s, "
        f"without building the model; singular values in {', '.join(scan['dtypes']) or 'no dtype'}. "
        f"Largest matrix read: `{scan['largest_matrix']['name']}` {scan['largest_matrix']['shape']}."
        + (f" Other numbered lists, not scanned: {others}." if others else "")
    )
    rep.table([{"block": i, "seconds": s} for i, s in enumerate(scan["block_seconds"])], digits=3)
