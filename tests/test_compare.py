"""``inflora compare``: end to end on a tiny model (resumable, report, recommendation), a few steps per
arm on the real MiniLM, the recommendation logic on hand-made numbers, and bad input."""

import json
import math

import pytest
from typer.testing import CliRunner

from inflora.cli import app
from inflora.experiment.compare_results import aggregate_compare, recommend, rule_rows
from inflora.strategies import STRATEGIES

runner = CliRunner()
TINY = [
    "--budget",
    "layers=2",
    "--limit-train",
    32,
    "--limit-eval",
    32,
    "--batch-size",
    16,
    "--batches",
    2,
    "--diagnose-batch-size",
    8,
    "--max-length",
    32,
]


def run(*args):
    return runner.invoke(app, ["compare", *[str(a) for a in args]], env={"COLUMNS": "80"})


@pytest.fixture
def tiny_dir(tiny_bert_dir):
    return tiny_bert_dir


def test_compare_end_to_end_on_a_tiny_model_and_resume(tiny_dir, tmp_path):
    args = ["--model", tiny_dir, "--rules", "ski,kappa,random,all", "--seeds", "1,2", *TINY, "--out", tmp_path]
    res = run(*args)
    assert res.exit_code == 0, res.output
    out = json.loads((tmp_path / "compare.json").read_text())
    rows = {r["rule"]: r for r in out["table"]}
    assert set(rows) == {"ski", "kappa", "random", "all"} and out["metric"] == "test"
    k_rules = [r for n, r in rows.items() if n != "all"]
    assert {len(v) for r in k_rules for v in r["layers"].values()} == {2} and rows["all"]["layers"]["1"] == [0, 1, 2, 3]
    assert len({r["trainable_params"] for r in k_rules}) == 1 < rows["all"]["trainable_params"]
    assert rows["kappa"]["layers"]["1"] == out["diagnosis_rules"]["rules"]["kappa"]["selected"]
    from inflora.select import random_blocks

    assert rows["random"]["layers"] == {"1": random_blocks(4, 2, 1), "2": random_blocks(4, 2, 2)}  # drawn per seed
    for r in rows.values():
        assert r["test"]["n"] == 2 and r["step_seconds"] > 0
    families = ["best"] + [r for r in ("ski", "all") if r != out["recommendation"]["best_mean"]]
    assert [p["against"] for p in out["paired"]] == [f for f in families for _ in range(3)]  # 3 others per family
    assert all(p["p_holm"] >= p["p"] for p in out["paired"] if math.isfinite(p["p"]))
    for p in out["paired"]:  # per-example test scores were kept: a paired bootstrap over examples
        lo, hi = p["examples_ci"]
        assert lo <= p["mean"] + 1e-9 and p["mean"] - 1e-9 <= hi
    assert out["recommendation"]["text"] and "recommendation:" in res.output
    table = res.output[res.output.index("matched-budget comparison") : res.output.index("recommendation:")]
    assert "0-3" in table and all(len(line) <= 80 and "…" not in line for line in table.splitlines())
    md = (tmp_path / "compare.md").read_text()
    assert "## Recommendation" in md and "Rules side by side" in md and (tmp_path / "compare.html").stat().st_size > 0
    again = run(*args)  # every unit cached: nothing recomputed, the same numbers
    assert again.exit_code == 0, again.output
    assert json.loads((tmp_path / "compare.json").read_text())["table"] == out["table"]
    log = json.loads((tmp_path / "invocations.json").read_text())
    assert log[-1]["units_before"] == log[-1]["units_after"] == 1 + 4 * 2


def test_params_budget_gives_all_a_lower_rank(tiny_dir, tmp_path):
    res = run(
        "--model",
        tiny_dir,
        "--rules",
        "kappa,all",
        "--seeds",
        "1",
        *TINY[2:],
        "--budget",
        "layers=2,params=4000",
        "--lora-targets",
        "attention",
        "--out",
        tmp_path,
    )
    assert res.exit_code == 0, res.output
    rows = {r["rule"]: r for r in json.loads((tmp_path / "compare.json").read_text())["table"]}
    assert rows["all"]["r"] < rows["kappa"]["r"]
    step = {"kappa": 2 * 4 * 64, "all": 4 * 4 * 64}  # blocks · (q, k, v, o) · (32 + 32) per unit of rank
    for name, row in rows.items():
        assert 0 <= 4000 - row["lora_params"] < step[name]
    # trainable = LoRA + head, the head the same in both arms
    assert (
        rows["all"]["trainable_params"] - rows["all"]["lora_params"]
        == rows["kappa"]["trainable_params"] - rows["kappa"]["lora_params"]
    )


@pytest.mark.real
def test_compare_runs_a_few_steps_per_arm_on_real_minilm(tmp_path, data_dir):
    res = run(
        "--model",
        "minilm",
        "--rules",
        "ski,kappa,all",
        "--seeds",
        "42,43",
        "--budget",
        "layers=2",
        "--limit-train",
        32,
        "--limit-eval",
        48,
        "--batch-size",
        16,
        "--batches",
        2,
        "--diagnose-batch-size",
        16,
        "--max-length",
        32,
        "--out",
        tmp_path,
    )
    assert res.exit_code == 0, res.output
    out = json.loads((tmp_path / "compare.json").read_text())
    assert all(r["test"]["n"] == 2 for r in out["table"])
    units = [json.loads(p.read_text()) for p in (tmp_path / "units").glob("arm-*/result.json")]
    assert len(units) == 6 and all(u["steps"] == 2 for u in units)


def _arms(acc: dict[str, list[float]]):
    return [
        {
            "rule": rule,
            "seed": s,
            "layers": [0],
            "r": 8,
            "trainable_params": 100 if rule != "all" else 300,
            "lora_params": 90,
            "steps_per_second": 10.0,
            "accuracy": {"test": a, "validation": a},
        }
        for rule, values in acc.items()
        for s, a in enumerate(values)
    ]


def test_recommendation_names_a_clear_winner():
    res = aggregate_compare(
        _arms({"ski": [0.80, 0.81, 0.82], "kappa": [0.70, 0.70, 0.72], "all": [0.75, 0.74, 0.77]}),
        ["ski", "kappa", "all"],
    )
    rec = res["recommendation"]
    assert rec["winner"] == "ski" and "**ski** wins" in rec["text"] and rec["beaten"] == ["all", "kappa"]


def test_holm_correction_by_hand():
    from inflora.experiment.stats import holm, paired_p

    adjusted = holm({"a": 0.01, "b": 0.04, "c": 0.03, "d": math.nan})
    assert adjusted["a"] == pytest.approx(0.03) and adjusted["c"] == pytest.approx(0.06)
    assert adjusted["b"] == pytest.approx(0.06) and math.isnan(adjusted["d"])  # monotone: never below c's
    # differences 2, 3, 4 points: t = 3 / (1 / sqrt 3) = 5.196 on 2 df, two-sided p = 0.0351
    assert paired_p([0.02, 0.03, 0.04]) == pytest.approx(0.0351, abs=2e-4)
    assert paired_p([0.01, 0.01]) == 0.0 and paired_p([0.0, 0.0]) == 1.0 and math.isnan(paired_p([0.1]))


def test_three_uncorrected_wins_are_not_a_winner_after_holm():
    """Each rule is 2-4 points below the best on every seed: each paired interval excludes 0 (p = 0.035),
    but the best was picked from four after looking; Holm (3 x 0.035 > 0.05) names no winner."""
    acc = {
        "ski": [0.80, 0.80, 0.80],
        "kappa": [0.78, 0.77, 0.76],
        "cka-io": [0.78, 0.77, 0.76],
        "all": [0.78, 0.77, 0.76],
    }
    res = aggregate_compare(_arms(acc), list(acc))
    rec = res["recommendation"]
    against_best = [p for p in res["paired"] if p["against"] == "best"]
    assert all(p["ci"][1] < 0 for p in against_best)  # uncorrected: every interval lies below 0
    assert all(p["p_holm"] == pytest.approx(3 * 0.0351, abs=1e-3) for p in against_best)
    assert rec["winner"] is None and rec["beaten"] == [] and "no rule is distinguishable" in rec["text"]


def test_recommendation_says_when_nothing_is_distinguishable_and_picks_the_cheapest():
    rows = rule_rows(
        _arms({"top-grad": [0.80, 0.70, 0.75], "kappa": [0.71, 0.79, 0.74], "all": [0.75, 0.72, 0.78]}),
        ["top-grad", "kappa", "all"],
    )
    rec = recommend(rows, "test")
    assert rec["winner"] is None and "no rule is distinguishable" in rec["text"]
    assert rec["cheapest"] == "all"  # needs nothing (though it trains more), before weights and gradients
    one = recommend(rule_rows(_arms({"kappa": [0.8], "all": [0.7]}), ["kappa", "all"]), "test")
    assert "one seed gives no interval" in one["text"] and one["winner"] is None


def test_rule_arm_strategies_are_registered():
    assert {"lora-kappa", "lora-spectrum-snr", "lora-top-grad", "lora-cka-io", "lora-alpha-hts"} <= set(
        STRATEGIES.names()
    )


@pytest.mark.parametrize(
    "args,message",
    [
        (["--rules", "ski,nope"], "unknown selection rule 'nope'; choose one of: all"),
        (["--rules", "kappa,kappa"], "listed twice"),
        (["--seeds", ""], "give at least one seed"),
        (["--budget", "layers=9"], "a budget of 9 blocks is impossible for a 4-block model"),
        (["--budget", "layers=0"], "needs a whole number >= 1"),
        (["--budget", "params=10"], "no rank can meet it"),
        (["--epochs", "0"], "--epochs must be at least 1"),
    ],
)
def test_compare_bad_input_is_one_line_error(args, message, tiny_dir, tmp_path):
    res = run("--model", tiny_dir, "--rules", "ski,kappa", "--seeds", "1", *TINY, *args, "--out", tmp_path)
    assert res.exit_code == 2, res.output
    assert message in res.output and "Traceback" not in res.output
    assert len([line for line in res.output.splitlines() if line.startswith("error:")]) == 1
