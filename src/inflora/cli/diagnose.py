"""``inflora diagnose``: probe a model on target data, choose the band, write JSON + report."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

from rich.console import Console

from . import command
from .options import (
    DATA,
    MODEL,
    PROBE,
    SELECTION,
    Batches,
    BatchSize,
    CompletionColumn,
    DataDir,
    Device,
    LabelColumn,
    MaxLength,
    MessagesColumn,
    Model,
    Out,
    Precision,
    PromptColumn,
    RuleBudget,
    Rules,
    Seed,
    Task,
    TextColumn,
    Tower,
    option,
)
from .output import console as make_console
from .output import layer_ranges, table


def parse_params(items: list[str]) -> dict:
    """``--param alpha=0.3 --param top=3`` -> {'alpha': 0.3, 'top': 3}."""
    from ..errors import ConfigError

    out: dict = {}
    for item in items:
        if "=" not in item:
            raise ConfigError(f"--param expects key=value, got {item!r}")
        key, raw = item.split("=", 1)
        for cast in (int, float):
            try:
                out[key] = cast(raw)
                break
            except ValueError:
                continue
        else:
            out[key] = {"true": True, "false": False}.get(raw.lower(), raw)
    return out


def print_summary(d, out: Path, console: Console | None = None) -> None:
    console = console or make_console()
    t = table(
        f"{d.model}: inflection band {layer_ranges(d.inflection_layers)}",
        ["layer", "entropy", "H/log n", "‖∂L/∂h‖", "‖∇θL‖", "SKI", "stab.", "band"],
    )
    for r, ski, s in zip(d.layers, d.ski, d.stability):
        t.add_row(
            str(r["layer"]),
            f"{r['attention_entropy']:.3f}",
            f"{r['attention_entropy_norm']:.3f}",
            f"{r['activation_grad_norm']:.2e}",
            f"{r['param_grad_norm']:.2e}",
            f"{ski:.3f}",
            f"{s:.2f}",
            "◀ band" if r["layer"] in d.inflection_layers else "",
        )
    console.print(t)
    if d.moe:
        console.print(moe_table(d))
    if "attention_entropy_se" in d.layers[0]:
        se = max(r["attention_entropy_se"] for r in d.layers)
        console.print(
            f"entropy is an estimate from {d.config['entropy_queries']} sampled queries per sequence "
            f"(largest standard error {se:.3g} nats)"
        )
    o = d.output
    if o.get("predictions"):
        console.print(
            f"output ({o['predictions']} {o['unit']}s): accuracy {o['accuracy']:.3f}, mean confidence "
            f"{o['mean_confidence']:.3f}, ECE {o['ece']:.3f}, confidence > 0.9: {o['share_confidence_over_0.9']:.1%}, "
            f"confident wrong answers carry {o['confident_wrong_grad_share']:.1%} of ‖p − y‖"
        )
    for flag in d.flags:
        console.print(f"[yellow]warning:[/] {flag}")
    console.print(
        f"wrote {out / 'diagnosis.json'}, {out / 'report.html'}, {out / 'report.md'}, {out / 'profile.png'}, {out / 'reliability.png'}",
        soft_wrap=True,
    )


def moe_table(d):
    from ..reports.document import fmt
    from ..reports.moe_section import MOE_COLUMNS, moe_rows

    t = table(f"mixture of experts: {d.moe['num_experts']} experts, top-{d.moe['top_k']}", list(MOE_COLUMNS))
    for row in moe_rows(d):
        t.add_row(*(v if isinstance(v, str) else fmt(v, 3) for v in row.values()))
    return t


# Options only ``diagnose`` takes (the shared ones are in ``options.py``).
Split = Annotated[
    Optional[str],
    option(
        DATA,
        "split to probe on (default: validation of a task, all of a user "
        "file; train/validation/test of a file are its 80/10/10 split)",
    ),
]
Rule = Annotated[
    str, option(SELECTION, "rule that chooses the band: ski, ski-decay, topk, threshold (or a gradient/entropy rule)")
]
Param = Annotated[list[str], option(SELECTION, "rule parameter key=value (repeatable), e.g. alpha=0.3")]
Resamples = Annotated[int, option(SELECTION, "bootstrap resamples for the stability estimate")]
Fsdp = Annotated[bool, option(MODEL, "under torchrun: shard the model with FSDP2 (every rank probes every batch)")]
Attention = Annotated[
    Optional[str],
    option(
        PROBE,
        "how attention entropy is measured: streaming (beside SDPA, memory linear in context length; default "
        "where the family allows it) or eager (attention maps; the fallback for MPNet)",
    ),
]
EntropyQueries = Annotated[
    Optional[int],
    option(
        PROBE,
        "estimate attention entropy from N sampled query positions per sequence (streaming only; reports a "
        "standard error); default: every query, exact",
    ),
]
HeadWarmup = Annotated[
    int,
    option(
        PROBE,
        "first fit the classification head alone for N steps on the task's train split (frozen features), so "
        "gradients are not shaped by a random head",
    ),
]
WeightsOnly = Annotated[
    bool,
    option(
        SELECTION,
        "with --rules: no data, no backward pass; only weight rules (spectrum-snr, kappa, alpha-hts) and random/all",
        "--weights-only",
    ),
]


@command("diagnose")
def diagnose_cmd(
    model: Model = "minilm",
    task: Task = "rotten_tomatoes",
    split: Split = None,
    batches: Batches = 8,
    batch_size: BatchSize = 32,
    max_length: MaxLength = 64,
    rule: Rule = "ski",
    param: Param = [],  # noqa: B006 (typer copies the default)
    resamples: Resamples = 200,
    seed: Seed = 0,
    text_column: TextColumn = "text",
    label_column: LabelColumn = "label",
    prompt_column: PromptColumn = "prompt",
    completion_column: CompletionColumn = "completion",
    messages_column: MessagesColumn = "messages",
    data_dir: DataDir = None,
    device: Device = "auto",
    precision: Precision = "fp32",
    fsdp: Fsdp = False,
    out: Out = Path("runs/diagnose"),
    attention: Attention = None,
    entropy_queries: EntropyQueries = None,
    rules: Rules = None,
    budget: RuleBudget = None,
    head_warmup: HeadWarmup = 0,
    tower: Tower = "language",
    weights_only: WeightsOnly = False,
) -> None:
    """Measure per-layer attention entropy and gradient flow, and choose the inflection band."""
    from ..devices import init_processes, is_main_process
    from ..diagnosis import diagnose
    from ..io import output_dir
    from ..strategies.budget import Budget
    from ..validate import check_values

    check_values(
        batches=batches,
        batch_size=batch_size,
        max_length=max_length,
        resamples=resamples,
        seed=seed,
        entropy_queries=entropy_queries,
        head_warmup=head_warmup,
    )  # before the output folder is made
    _check_probe(attention, tower)
    rule_names, spend = _rule_names(rules), Budget.parse(budget)
    choice = _placement(device, precision, fsdp)
    output_dir(out)
    if weights_only:
        return _weights_only(model, rule_names, spend, seed, out)
    if choice.world_size > 1:
        init_processes(choice.device)
    main = is_main_process()
    Console(stderr=True, quiet=not main).print(f"diagnosing {model} on {task} …")
    columns = dict(
        text_column=text_column,
        label_column=label_column,
        prompt_column=prompt_column,
        completion_column=completion_column,
        messages_column=messages_column,
    )
    d = diagnose(
        model,
        task,
        split=split,
        batches=batches,
        batch_size=batch_size,
        max_length=max_length,
        rule=rule,
        rule_params=parse_params(param),
        resamples=resamples,
        seed=seed,
        data_dir=data_dir,
        columns=columns,
        attention=attention,
        entropy_queries=entropy_queries,
        rules=rule_names or None,
        budget=spend,
        device=choice.device,
        precision=precision,
        fsdp=fsdp,
        progress=main,
        head_warmup=head_warmup,
        tower=tower,
    )
    if main:  # every rank holds the same result; one writes it
        _write(d, out)


def _rule_names(rules: str | None) -> list[str]:
    """``--rules a,b`` as names, each known (an unknown one fails before the output folder is made)."""
    from ..select import RULES

    names = [r.strip() for r in (rules or "").split(",") if r.strip()]
    for name in names:
        RULES.get(name)
    return names


def _check_probe(attention: str | None, tower: str) -> None:
    """The attention mode and tower are names the model layer knows; checked before anything loads."""
    from ..models.attention import check_attention_mode
    from ..models.discovery import check_tower

    if attention is not None:
        check_attention_mode(attention)
    check_tower(tower)


def _placement(device: str, precision: str, fsdp: bool):
    """Where the probe runs; FSDP needs the processes that torchrun starts."""
    from ..devices import resolve_device
    from ..errors import ConfigError

    choice = resolve_device(device, precision)
    if fsdp and choice.world_size < 2:
        raise ConfigError("--fsdp needs several processes: torchrun --nproc-per-node N -m inflora diagnose --fsdp …")
    return choice


def _write(d, out: Path) -> None:
    """diagnosis.json and the reports, then the summary (and the rules side by side) on the terminal."""
    from ..reports import write_diagnosis_report

    d.to_json(out / "diagnosis.json")
    write_diagnosis_report(d, out)
    print_summary(d, out)
    if d.rules:
        print_rules(d.rules, d.num_layers)


def _weights_only(model: str, rule_names: list[str], spend, seed: int, out: Path) -> None:
    from ..errors import ConfigError
    from ..io import atomic_write_json
    from ..reports.document import Report
    from ..reports.rules_section import add_rules_section, add_scan_section
    from ..weight_scan import scan_weights

    if not rule_names:
        raise ConfigError("--weights-only needs --rules (weight rules: spectrum-snr, kappa, alpha-hts; or random, all)")
    result = scan_weights(model, rule_names, spend, seed, progress=True, resume_dir=out / ".scan")
    n = len(next(iter(result["rules"].values()))["raw"])
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / "rules.json", {"model": model, **result})
    rep = Report(f"inflora rules (weights only) — {model}")
    add_rules_section(rep, result, n)
    if "scan" in result:
        add_scan_section(rep, result["scan"])
    rep.write(out, stem="rules")
    print_rules(result, n)
    err = make_console(stderr=True)
    if "scan" in result:
        err.print(scan_line(result["scan"]))
    for note in result.get("notes", []):
        err.print(f"note: {note}")
    err.print(f"wrote {out / 'rules.json'}, {out / 'rules.md'}, {out / 'rules.html'}")


def scan_line(scan: dict) -> str:
    """What the scan read and its time per block, in lines that fit 80 columns."""
    per_block = scan["block_seconds"]
    slowest = max(range(len(per_block)), key=per_block.__getitem__)
    others = "".join(f"\nnot scanned: {p} ({n} blocks)" for p, n in scan["other_block_lists"].items())
    return (
        f"scanned {scan['matrices']} matrices of {scan['blocks']} blocks ({scan['block_list']})\n"
        f"from {scan['files']} file(s), {scan['bytes'] / 1e9:.2f} GB, in {scan['seconds']:.1f} s\n"
        f"time per block: {sum(per_block) / len(per_block):.2f} s "
        f"(slowest: block {slowest}, {per_block[slowest]:.2f} s){others}"
    )


DOT_COLUMNS_UP_TO = 12  # blocks shown one ● column each; deeper models get one column of block ranges


def print_rules(result: dict, num_layers: int) -> None:
    """The rules side by side and their overlap, in 80 columns for any depth and any number of rules."""
    console = make_console()
    console.print(_rules_table(result, num_layers))
    console.print(_overlap_table(result))


def _rules_table(result: dict, num_layers: int):
    dots = num_layers <= DOT_COLUMNS_UP_TO
    blocks = [str(i) for i in range(num_layers)] if dots else ["blocks"]
    t = table(
        f"rules side by side at K = {result['k']} blocks" + (" (● chosen; columns = blocks)" if dots else ""),
        ["rule", "needs", "selects", *blocks, "r", "LoRA params"],
        tight=True,
    )
    for name, r in result["rules"].items():
        chosen = (
            ["●" if i in r["selected"] else "·" for i in range(num_layers)] if dots else [layer_ranges(r["selected"])]
        )
        params = r.get("lora_params", "")
        t.add_row(
            name,
            ", ".join(r["needs"]) or "nothing",
            r["direction"],
            *chosen,
            str(r.get("r", "")),
            f"{params:,}" if isinstance(params, int) else str(params),
        )
    for col in t.columns[1 : 3 + len(blocks)]:
        col.justify = "center"
    return t


def _overlap_table(result: dict):
    """Jaccard of the chosen sets; columns are numbered like the rows so ten rules still fit."""
    names = list(result["overlap"])
    t = table(
        "overlap of the chosen blocks (Jaccard; columns numbered as rows)",
        ["rule", *(str(i + 1) for i in range(len(names)))],
        tight=True,
    )
    for i, a in enumerate(names):
        t.add_row(f"{i + 1} {a}", *(f"{result['overlap'][a][b]:.2f}" for b in names))
    return t
