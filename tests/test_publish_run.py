"""scripts/publish_run.py copies what the tool wrote, and each diagnosis of the run's own budget only."""

import importlib.util
import json
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "publish_run.py"


@pytest.fixture(scope="module")
def publish_run():
    spec = importlib.util.spec_from_file_location("publish_run", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _unit(root: Path, name: str, kind: str, config: dict, diagnosis: dict | None = None) -> None:
    folder = root / "units" / name
    folder.mkdir(parents=True)
    (folder / "unit.json").write_text(json.dumps({"kind": kind, "config": config}))
    if diagnosis is not None:
        (folder / "diagnosis.json").write_text(json.dumps(diagnosis))


def test_publishes_reports_and_the_run_budgets_diagnoses_only(publish_run, tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "invocations.json").write_text("[]")
    (run / "results.json").write_text(json.dumps({"meta": {"budget_layers": 3}}))
    (run / "results.md").write_text("# report")
    (run / "notes.txt").write_text("not the tool's")
    src = {"seed": 42}
    _unit(run, "diagnose-a", "diagnose", {"source": src, "regime": "over", "budget": 3}, {"k": 3})
    _unit(run, "diagnose-b", "diagnose", {"source": src, "regime": "over", "budget": 2}, {"k": 2})  # reused cache
    _unit(run, "diagnose-c", "diagnose", {"source": src, "regime": "over", "split": "train"}, {"train": 1})
    _unit(run, "target-d", "target", {"source": src, "regime": "over"})
    dest = tmp_path / "published"
    publish_run.publish(run, dest, None)
    assert sorted(p.relative_to(dest).as_posix() for p in dest.rglob("*") if p.is_file()) == [
        "diagnoses/over-seed42.json",
        "invocations.json",
        "results.json",
        "results.md",
    ]
    assert json.loads((dest / "diagnoses" / "over-seed42.json").read_text()) == {"k": 3}


def test_refuses_a_folder_that_is_not_a_run(publish_run, tmp_path):
    with pytest.raises(SystemExit, match="error: .* is not a finished experiment or compare folder"):
        publish_run.publish(tmp_path, tmp_path / "out", None)
