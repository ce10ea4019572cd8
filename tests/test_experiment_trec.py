"""The SST-2 → TREC experiment: its cache keys beside sst2-to-rt's, the forgetting-against-random
reading, and bad input (the run itself: the slow test at the end, on the smoke profile)."""

import json

import pytest
from typer.testing import CliRunner

from inflora.cli import app
from inflora.experiment import Plan, get_profile
from inflora.experiment.forgetting import versus_random
from inflora.experiment.harness import diagnose_config, target_config
from inflora.experiment.stats import summary
from inflora.experiment.transfers import get_transfer


def test_sst2_to_rt_keeps_its_cache_keys_and_trec_gets_its_own():
    p, rt, trec = get_profile("smoke"), get_transfer("sst2-to-rt"), get_transfer("sst2-to-trec")
    assert target_config(p, 1, "over", "head", None, rt) == target_config(p, 1, "over", "head", None)
    assert diagnose_config(p, 1, "over", transfer=rt) == diagnose_config(p, 1, "over")
    cfg = target_config(p, 1, "over", "head", None, trec)
    assert cfg["task"] == "trec" and cfg["new_head"] is True and cfg["retention_task"] == "sst2"
    assert diagnose_config(p, 1, "over", transfer=trec)["task"] == "trec"
    assert trec.metrics() == ("test",) and rt.metrics() == ("test", "test_decontaminated")


def _row(strategy, test, drop):
    cell = lambda xs: {"per_seed": dict(zip((42, 43, 44), xs)), **summary(xs)}  # noqa: E731
    return {"regime": "over", "strategy": strategy, "test": cell(test), "forgetting": cell(drop)}


def test_versus_random_says_which_arm_forgets_less_at_equal_accuracy():
    table = [
        _row("lora-random", [0.80, 0.82, 0.81], [0.10, 0.12, 0.11]),
        _row("lora-kappa", [0.81, 0.82, 0.80], [0.02, 0.03, 0.025]),  # same accuracy, forgets less
        _row("lora-top-grad", [0.70, 0.71, 0.69], [0.00, 0.01, 0.005]),  # forgets less, but learns less
        _row("head", [0.5, 0.5, 0.5], [0.0, 0.0, 0.0]),
    ]  # not a band arm
    rows = {r["strategy"]: r for r in versus_random(table)}
    assert set(rows) == {"lora-kappa", "lora-top-grad"}
    assert rows["lora-kappa"]["forgets_less_at_equal_accuracy"]
    assert not rows["lora-top-grad"]["forgets_less_at_equal_accuracy"]
    assert rows["lora-kappa"]["forgetting"]["mean"] == pytest.approx(0.025 - 0.11)


def test_unknown_experiment_names_the_choices(tmp_path):
    res = CliRunner().invoke(app, ["experiment", "sst2-to-imdb", "--profile", "smoke", "--out", str(tmp_path)])
    assert res.exit_code == 2 and "sst2-to-rt, sst2-to-trec" in res.output and "Traceback" not in res.output
    with pytest.raises(Exception, match="unknown experiment"):
        Plan(get_profile("smoke"), [1], ["over"], ["head"], transfer="nope").validate()


@pytest.mark.slow
@pytest.mark.real
def test_sst2_to_trec_smoke_end_to_end(tmp_path, data_dir):
    """Every stage on the real MiniLM, SST-2 source and TREC target (minutes on a busy machine)."""
    res = CliRunner().invoke(
        app,
        [
            "experiment",
            "sst2-to-trec",
            "--profile",
            "smoke",
            "--seeds",
            "42",
            "--regimes",
            "over",
            "--strategies",
            "head,lora-random,lora-kappa",
            "--budget",
            "layers=2",
            "--data-dir",
            str(data_dir),
            "--out",
            str(tmp_path),
        ],
    )
    assert res.exit_code == 0, res.output
    data = json.loads((tmp_path / "results.json").read_text())
    assert data["metrics"] == ["test"] and {r["strategy"] for r in data["table"]} == {
        "head",
        "lora-random",
        "lora-kappa",
    }
    for row in data["table"]:
        assert 0 <= row["test"]["mean"] <= 1 and row["retention"]["n"] == 1 and row["forgetting"]["n"] == 1
    md = (tmp_path / "results.md").read_text()
    assert "SST-2 → TREC" in md and "Forgetting against random blocks" in md and "decontaminated" not in md
