"""``inflora compare --oracle``: the per-block arms on a tiny model (cached, reported), the rank
correlations against scipy, a rule that is the oracle scores 1 and its reverse −1, and bad input."""

import json
import math

import numpy as np
import pytest
from scipy import stats
from typer.testing import CliRunner

from inflora.cli import app
from inflora.experiment.oracle_results import aggregate_oracle
from inflora.experiment.rank_corr import kendall_rows, permutation_p, spearman_rows

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


def test_oracle_arms_on_a_tiny_model_cached_and_reported(tiny_bert_dir, tmp_path):
    args = [
        "--model",
        tiny_bert_dir,
        "--rules",
        "ski,kappa,all",
        "--seeds",
        "1,2",
        "--oracle",
        *TINY,
        "--out",
        tmp_path,
    ]
    res = run(*args)
    assert res.exit_code == 0, res.output
    out = json.loads((tmp_path / "oracle.json").read_text())
    assert out["blocks"] == [0, 1, 2, 3] and out["metric"] == "test"
    units = [json.loads(p.read_text()) for p in (tmp_path / "units").glob("arm-*/result.json")]
    by = {(u["rule"], u["seed"]): u for u in units}
    assert by["block-2", 1]["layers"] == [2] and by["without-2", 1]["layers"] == [0, 1, 3]
    assert by["head", 1]["strategy"] == "head" and by["all", 1]["layers"] == [0, 1, 2, 3]
    # 2 seeds x (head, all, 4 single, 4 LOO) + ski, kappa (all is shared) per seed
    assert len(units) == 2 * 10 + 2 * 2
    n_test = len(by["head", 1]["per_example"]["test"]["correct"])
    for u in units:  # per-example scores agree with the accuracy they were kept beside
        assert np.mean(u["per_example"]["test"]["correct"]) == pytest.approx(u["accuracy"]["test"])
    row = out["table"][2]
    gain = {s: by["block-2", s]["accuracy"]["test"] - by["head", s]["accuracy"]["test"] for s in (1, 2)}
    assert row["gain"]["per_seed"] == {str(s): pytest.approx(v) for s, v in gain.items()}
    loo = {s: by["all", s]["accuracy"]["test"] - by["without-2", s]["accuracy"]["test"] for s in (1, 2)}
    assert row["loo_loss"]["mean"] == pytest.approx(np.mean(list(loo.values())))
    lo, hi = row["gain"]["examples_ci"]
    assert lo <= row["gain"]["mean"] + 1 / n_test and hi >= row["gain"]["mean"] - 1 / n_test
    rules = {r["rule"]: r for r in out["rules"]}
    assert set(rules) == {"random (expected)", "ski", "kappa"} and set(rules["ski"]["regret"]) == {"1", "2", "3"}
    assert (tmp_path / "oracle.md").read_text().count("| block-") == 0 and (tmp_path / "oracle_profile.png").is_file()
    assert "per-block oracle" in res.output and "oracle:" in res.output
    again = run(*args)  # every unit cached
    assert again.exit_code == 0, again.output
    log = json.loads((tmp_path / "invocations.json").read_text())
    assert log[-1]["units_before"] == log[-1]["units_after"] == 1 + len(units)


def _oracle_arms(gains: dict[int, list[float]]) -> list[dict]:
    """Hand-made arms: head at 0.5 and every block b alone at 0.5 + gains[seed][b]; all at 0.9 and
    every block but b at 0.9 − gains[seed][b]."""
    arms = []
    for seed, g in gains.items():
        arms += [
            {"rule": "head", "seed": seed, "accuracy": {"test": 0.5}},
            {"rule": "all", "seed": seed, "accuracy": {"test": 0.9}},
        ]
        for b, v in enumerate(g):
            arms += [
                {"rule": f"block-{b}", "seed": seed, "accuracy": {"test": 0.5 + v}},
                {"rule": f"without-{b}", "seed": seed, "accuracy": {"test": 0.9 - v}},
            ]
    return arms


def _oracle(gains: dict[int, list[float]], scores: list[float], direction: str = "high") -> dict:
    arms = _oracle_arms(gains)
    rules = {
        "rules": {
            "mine": {"raw": scores, "direction": direction, "selected": [0, 1]},
            "random": {"raw": [None] * len(scores), "direction": "none", "selected": [0, 1]},
        }
    }
    return aggregate_oracle({"arms": arms, "blocks": list(range(len(scores))), "depth": len(scores)}, rules)


GAINS = {
    1: [0.01, 0.05, 0.02, 0.08, 0.03, 0.00],
    2: [0.02, 0.06, 0.01, 0.07, 0.04, 0.01],
    3: [0.00, 0.04, 0.03, 0.09, 0.02, 0.01],
}


def test_a_rule_whose_scores_are_the_oracles_own_correlates_1_and_its_reverse_minus_1():
    own = np.mean(list(GAINS.values()), axis=0).tolist()
    same = {r["rule"]: r for r in _oracle(GAINS, own)["rules"]}["mine"]
    reverse = {r["rule"]: r for r in _oracle(GAINS, own, direction="low")["rules"]}["mine"]
    for name in ("spearman", "kendall"):
        assert same["single"][name]["value"] == pytest.approx(1.0)
        assert reverse["single"][name]["value"] == pytest.approx(-1.0)
        assert same["loo"][name]["value"] == pytest.approx(1.0)  # LOO loss mirrors the gains here
    assert same["single"]["spearman"]["p_permutation"] == pytest.approx(1 / 720)  # only the identity order ties it
    assert all(same["regret"][k]["mean"] == pytest.approx(0.0) for k in (1, 2, 3))
    worst = sorted(own)[:2]
    assert reverse["regret"][2]["mean"] == pytest.approx(np.mean(sorted(own)[-2:]) - np.mean(worst))
    assert same["better_than_chance"] and not reverse["better_than_chance"]
    g = np.array(list(GAINS.values()))  # its own choice, blocks 0 and 1, against the oracle's best two (3, 1)
    assert same["regret_selected"]["mean"] == pytest.approx(np.mean(g[:, [3, 1]].mean(1) - g[:, [0, 1]].mean(1)))


def test_a_partial_oracle_without_its_leave_one_out_arms_reports_the_single_block_profile(tmp_path):
    from inflora.experiment.oracle_report import render_oracle

    full = _oracle(GAINS, [1, 2, 3, 4, 5, 6])
    arms = [a for a in _oracle_arms(GAINS) if not a["rule"].startswith("without-")]
    rules = {"rules": {"mine": {"raw": [1, 2, 3, 4, 5, 6], "direction": "high", "selected": [0, 1]}}}
    part = aggregate_oracle(
        {"arms": arms, "blocks": list(range(6)), "depth": 6, "groups": ["reference", "single"]}, rules
    )
    mine = {r["rule"]: r for r in part["rules"]}["mine"]
    assert mine["single"] == {r["rule"]: r for r in full["rules"]}["mine"]["single"] and mine["loo"] == {}
    assert all(r["loo_loss"]["n"] == 0 for r in part["table"])
    render_oracle(part, {"command": "inflora compare --oracle", "plan": {"model": "m", "task": "t"}}, tmp_path)
    assert "**Partial:**" in (tmp_path / "oracle.md").read_text()


def test_random_expected_regret_and_rules_without_scores():
    res = _oracle(GAINS, [1, 2, 3, 4, 5, 6])
    rows = {r["rule"]: r for r in res["rules"]}
    assert "random" not in rows  # no block scores: nothing to correlate
    g = np.array(list(GAINS.values()))
    top = np.argsort(-g.mean(0))[:1]
    assert rows["random (expected)"]["regret"][1]["mean"] == pytest.approx(np.mean(g[:, top].mean(1) - g.mean(1)))
    assert res["oracle_order"] == [3, 1, 4, 2, 0, 5]


def test_vectorised_rank_correlations_match_scipy():
    rng = np.random.default_rng(0)
    x = rng.normal(size=7).round(1)
    x[2] = x[5]  # a tie
    ys = rng.normal(size=(20, 7)).round(1)
    ys[3, 1] = ys[3, 4]
    for y, rho, tau in zip(ys, spearman_rows(x, ys), kendall_rows(x, ys)):
        assert rho == pytest.approx(stats.spearmanr(x, y).statistic)
        assert tau == pytest.approx(stats.kendalltau(x, y).statistic)
    assert math.isnan(spearman_rows(np.ones(7), ys[:1])[0]) and math.isnan(kendall_rows(np.ones(7), ys[:1])[0])
    # permutation p by brute force on 5 blocks
    x5, y5 = x[:5], ys[0, :5]
    import itertools

    obs = stats.spearmanr(x5, y5).statistic
    null = [stats.spearmanr(x5, y5[list(p)]).statistic for p in itertools.permutations(range(5))]
    assert permutation_p(x5, y5, spearman_rows) == pytest.approx(np.mean(np.array(null) >= obs - 1e-12))


def test_oracle_bad_input(tiny_bert_dir, tmp_path):
    res = run("--model", tiny_bert_dir, "--blocks", "0,1", "--out", tmp_path)
    assert res.exit_code == 2 and "add --oracle" in res.output
    res = run("--model", tiny_bert_dir, "--oracle", "--blocks", "0,9", "--out", tmp_path)
    assert res.exit_code == 2 and "out of range" in res.output


def test_oracle_refuses_more_than_48_blocks_without_a_subset():
    from inflora.errors import ConfigError
    from inflora.experiment.oracle import count_oracle_arms, oracle_blocks

    arms = 5 * (2 + 2 * 49)  # per seed: head, all, and each block alone and left out
    with pytest.raises(ConfigError, match=f"would run {arms} arms"):
        oracle_blocks(49, None, seeds=5)
    assert count_oracle_arms(49, 5) == arms and oracle_blocks(49, [0, 48], seeds=5) == [0, 48]
    assert oracle_blocks(48, None, seeds=1) == list(range(48))


@pytest.mark.real
def test_oracle_runs_a_few_steps_per_arm_on_real_minilm(tmp_path, data_dir):
    res = run(
        "--model",
        "minilm",
        "--rules",
        "ski,all",
        "--seeds",
        "42",
        "--oracle",
        "--blocks",
        "5",
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
    out = json.loads((tmp_path / "oracle.json").read_text())
    assert out["blocks"] == [5] and out["depth"] == 6
    units = {
        (u["rule"]): u for u in (json.loads(p.read_text()) for p in (tmp_path / "units").glob("arm-*/result.json"))
    }
    assert set(units) == {"head", "all", "block-5", "without-5", "ski"}
    assert units["without-5"]["layers"] == [0, 1, 2, 3, 4] and all(u["steps"] == 2 for u in units.values())
    assert all(len(u["per_example"]["test"]["correct"]) == 48 for u in units.values())
    # the rule `all` and the oracle's `all` are one unit, counted once in the report
    made = len(list((tmp_path / "units").iterdir()))
    assert f"units computed now {made}, from cache 0." in (tmp_path / "compare.md").read_text()


def test_example_bootstrap_pairs_examples_within_seeds():
    from inflora.experiment.oracle_results import example_interval

    rng = np.random.default_rng(1)
    a, b = rng.integers(0, 2, 400).astype(float), rng.integers(0, 2, 400).astype(float)
    half = 1.96 * np.std(a - b) / np.sqrt(400)  # the normal approximation's half width for one seed
    # the same examples in both seeds: one draw serves both (the width of one seed's); drawn per seed,
    # two seeds count as two independent samples of 400 (narrower by sqrt 2)
    for same, width in ((True, 2 * half), (False, 2 * half / np.sqrt(2))):
        lo, hi = example_interval([(a, b), (a, b)], same)
        assert lo < np.mean(a - b) < hi and hi - lo == pytest.approx(width, rel=0.2)
    assert example_interval([(a, a)], True) == [0.0, 0.0]  # identical predictions: no difference
    assert example_interval([(a, None)]) is None


def test_cli_oracle_on_49_blocks_without_blocks_is_one_line_naming_the_arms(tmp_path):
    from transformers import BertConfig

    BertConfig(num_hidden_layers=49, hidden_size=8, num_attention_heads=2, intermediate_size=16).save_pretrained(
        tmp_path
    )
    res = run("--model", tmp_path, "--oracle", "--seeds", "1,2,3", "--out", tmp_path / "out")
    arms = 3 * (2 + 2 * 49)
    assert res.exit_code == 2 and f"would run {arms} arms" in res.output and "--blocks" in res.output
    assert (
        res.output.startswith("error:") and "Traceback" not in res.output and not (tmp_path / "out" / "units").exists()
    )
