"""The experiment's rule arms (lora-<rule>) at a block budget K (the run itself: test_experiment.py, on the
smoke fixture's cached source run)."""

import pytest
from typer.testing import CliRunner

from inflora.cli import app
from inflora.experiment import get_profile
from inflora.experiment.harness import band_for, diagnose_config


def test_band_for_each_kind_of_strategy():
    d = {"inflection_layers": [0, 1, 4], "rules": {"rules": {"ski": {"selected": [0, 4]}, "kappa": {"selected": [2, 3]}}}}
    assert band_for("lora-kappa", d, 2) == [2, 3] and band_for("lora-kappa", d, None) == [2, 3]
    assert band_for("lora-inflection", d, 2) == [0, 4] and band_for("lora-random", d, 2) == [0, 4]
    assert band_for("lora-inflection", d, None) == [0, 1, 4]
    assert band_for("full", d, 2) is None and band_for("full", d, None) == [0, 1, 4]  # old cache keys kept


def test_a_diagnosis_without_rules_keeps_its_cache_key():
    p = get_profile("smoke")
    assert "rules" not in diagnose_config(p, 1, "over") and diagnose_config(p, 1, "over", ["ski"], 2)["budget"] == 2


def test_cpu_large_is_larger_than_cpu():
    cpu, large = get_profile("cpu"), get_profile("cpu-large")
    assert large.target_limit >= 4 * cpu.target_limit and large.source_limit > 2 * cpu.source_limit


def test_experiment_budget_bad_input(tmp_path):
    for budget, message in (("layers=0", "needs a whole number >= 1"), ("params=1000", "layers=K only")):
        res = CliRunner().invoke(app, ["experiment", "--profile", "smoke", "--budget", budget, "--out", str(tmp_path)])
        assert res.exit_code == 2 and message in res.output and "Traceback" not in res.output
    res = CliRunner().invoke(app, ["experiment", "--profile", "smoke", "--strategies", "lora-nope", "--out", str(tmp_path)])
    assert res.exit_code == 2 and "unknown strategy 'lora-nope'" in res.output
