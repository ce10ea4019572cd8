"""The experiment's rule arms (lora-<rule>) at a block budget K (the run itself: test_experiment.py, on the
smoke fixture's cached source run)."""

from typer.testing import CliRunner

from inflora.cli import app
from inflora.experiment import get_profile
from inflora.experiment.harness import band_for, diagnose_config


def test_band_for_each_kind_of_strategy():
    d = {
        "inflection_layers": [0, 1, 4],
        "rules": {"rules": {"ski": {"selected": [0, 4]}, "kappa": {"selected": [2, 3]}}},
    }
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
    res = CliRunner().invoke(
        app, ["experiment", "--profile", "smoke", "--strategies", "lora-nope", "--out", str(tmp_path)]
    )
    assert res.exit_code == 2 and "unknown strategy 'lora-nope'" in res.output


def _row(regime, strategy, accs, trainable=1000):
    per_seed = dict(zip((42, 43, 44), accs))
    return {
        "regime": regime,
        "strategy": strategy,
        "trainable_params": trainable,
        "step_seconds": 0.3,
        "test": {"per_seed": per_seed, "mean": sum(accs) / len(accs)},
    }


def test_rule_recommendations_read_the_band_arms_as_rules():
    from inflora.experiment.results import rule_recommendations

    table = [
        _row("over", "lora-kappa", [0.80, 0.81, 0.82]),
        _row("over", "lora-inflection", [0.70, 0.70, 0.71]),
        _row("over", "lora-all", [0.72, 0.71, 0.71], 3000),
        _row("over", "full", [0.90, 0.90, 0.90]),
        _row("under", "lora-inflection", [0.7, 0.8, 0.75]),
        _row("under", "lora-random", [0.8, 0.7, 0.75]),
    ]
    recs = rule_recommendations(table)
    assert set(recs) == {"over"}  # UNDER has no peer-rule arm: nothing to recommend there
    over = recs["over"]
    assert over["winner"] == "kappa" and over["beaten"] == ["all", "ski"]  # `full` is not a selection rule
