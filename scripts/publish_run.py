"""Copy a finished `inflora experiment` or `inflora compare` folder into docs/results/ unchanged.

Only what the tool wrote is copied (its reports, plots, JSON and invocation log, and each diagnosis
as ``diagnoses/<regime>-seed<seed>.json`` or ``diagnosis.json``); the unit caches and checkpoints stay
behind. ``time -v`` records of the run may be added as ``time-v.txt`` (``time-v-1.txt``, ... for a run
made in several invocations). Nothing is edited.

    python scripts/publish_run.py runs/sst2-to-rt-cpu-large-k2 docs/results/sst2-to-rt-cpu-large-k2 \
        --time-v runs/sst2-to-rt-cpu-large-k2.time
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

REPORT_SUFFIXES = {".md", ".html", ".json", ".png"}


def diagnosis_name(unit: dict, budget: int | None) -> str | None:
    """The published name of a diagnosis unit: the RT-validation diagnosis of an experiment's source
    checkpoint at this run's budget (``under-seed42.json``; a folder may also hold another budget's
    units, reused from cache), or a comparison's single diagnosis; None for the other units."""
    cfg = unit["config"]
    if (
        unit["kind"] == "diagnose"
        and "regime" in cfg
        and cfg.get("split", "validation") == "validation"
        and cfg.get("budget") == budget
    ):
        return f"{cfg['regime']}-seed{cfg['source']['seed']}.json"
    if unit["kind"] == "diagnose" and "regime" not in cfg:
        return "diagnosis.json"
    return None


def publish(run: Path, dest: Path, time_v: list[Path] | None) -> list[Path]:
    if not (run / "invocations.json").is_file():
        raise SystemExit(f"error: {run} is not a finished experiment or compare folder (no invocations.json)")
    dest.mkdir(parents=True, exist_ok=True)
    results = run / "results.json"
    budget = json.loads(results.read_text())["meta"].get("budget_layers") if results.is_file() else None
    written = []
    for f in sorted(run.iterdir()):
        if f.is_file() and f.suffix in REPORT_SUFFIXES:
            written.append(Path(shutil.copy2(f, dest / f.name)))
    for unit_file in sorted((run / "units").glob("diagnose-*/unit.json")):
        name = diagnosis_name(json.loads(unit_file.read_text()), budget)
        source = unit_file.parent / "diagnosis.json"
        if name and source.is_file():
            target = dest / "diagnoses" / name if name != "diagnosis.json" else dest / name
            target.parent.mkdir(parents=True, exist_ok=True)
            written.append(Path(shutil.copy2(source, target)))
    records = time_v or []
    for i, record in enumerate(records, 1):  # one per invocation of a run made in pieces
        name = "time-v.txt" if len(records) == 1 else f"time-v-{i}.txt"
        written.append(Path(shutil.copy2(record, dest / name)))
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path)
    parser.add_argument("dest", type=Path)
    parser.add_argument(
        "--time-v",
        type=Path,
        action="append",
        default=None,
        help="a `/usr/bin/time -v` record of the run (repeat for a run made in pieces, in order)",
    )
    args = parser.parse_args(argv)
    for path in publish(args.run, args.dest, args.time_v):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
