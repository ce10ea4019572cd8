"""The SST-2 → RT harness: claims logic on synthetic tables, the smoke profile end to end, resume."""

import json
import math

import pytest

from inflora.errors import ConfigError
from inflora.experiment import Plan, aggregate, get_profile, judge, paired, run_experiment, summary, verdict

STRATEGIES = ["full", "shallow", "lora-all", "lora-inflection", "lora-random", "head"]


def fake_run(regime, strategy, seed, acc, grad=1e-4, cka=(0.1, 0.1, 0.2, 0.3), layers=(0, 1)):
    return {
        "regime": regime,
        "strategy": strategy,
        "seed": seed,
        "layers": list(layers),
        "trainable_params": 10,
        "steps_per_second": 2.0,
        "accuracy": {"test": acc, "test_decontaminated": acc - 0.1},
        "grad_profile": [{"step": 0, "activation_grad_norm": [grad] * 4, "param_grad_norm": [1.0] * 4}],
        "delta_cka": list(cka),
    }


def synthetic(
    acc_over_infl=0.90, acc_under_infl=0.80, over_grad=1e-6, under_grad=1e-4, full_low_cka=0.5, bands=((0, 1), (0, 1))
):
    runs, diags = [], {}
    for seed, jitter in zip((1, 2, 3), (0.0, 0.002, -0.002)):
        for regime in ("under", "over"):
            for s in STRATEGIES:
                acc = 0.85 + jitter
                if s == "lora-inflection":
                    acc = (acc_over_infl if regime == "over" else acc_under_infl) + jitter
                grad = over_grad if regime == "over" else under_grad
                cka = (
                    (full_low_cka, full_low_cka, 0.2, 0.3)
                    if (s == "full" and regime == "under")
                    else (0.1, 0.1, 0.2, 0.3)
                )
                runs.append(fake_run(regime, s, seed, acc, grad, cka))
            diags[f"{regime}/{seed}"] = {"inflection_layers": list(bands[regime == "over"]), "stability": [1, 1, 0, 0]}
    return aggregate(runs, diags)


def by_id(claims):
    return {c["id"]: c["verdict"] for c in claims}


def test_stats_helpers():
    s = summary([1.0, 2.0, 3.0])
    assert s["mean"] == 2.0 and s["sd"] == 1.0
    assert s["ci"][0] == pytest.approx(2 - 4.302652729911275 / math.sqrt(3), rel=1e-9)
    assert math.isnan(summary([1.0])["ci"][0]) and summary([])["n"] == 0
    d = paired({1: 0.9, 2: 0.8}, {1: 0.7, 2: 0.7, 3: 0.1})
    assert d["n"] == 2 and d["per_seed"] == pytest.approx({1: 0.2, 2: 0.1})
    assert verdict([0.1, 0.2], +1) == "supported" and verdict([-0.2, -0.1], +1) == "not supported"
    assert verdict([-0.1, 0.2], +1) == "inconclusive" and verdict([-0.2, -0.1], -1) == "supported"


def test_claims_supported_when_the_numbers_say_so():
    res = synthetic()
    v = by_id(judge(res))
    assert v["a"] == "supported" and v["b"] == "supported" and v["c"] == "supported"
    assert v["d"] == "supported" and v["e"] == "supported" and v["f-over"] == "supported"
    assert v["f-under"] == "not supported"
    assert res["grad_ratio"]["shallow"]["over_over_under"]["mean"] == pytest.approx(0.01)


def test_claims_refuted_when_the_numbers_say_the_opposite():
    res = synthetic(
        acc_over_infl=0.80,
        acc_under_infl=0.90,
        over_grad=1e-4,
        under_grad=1e-4,
        full_low_cka=0.05,
        bands=((0, 1), (3, 4)),
    )
    v = by_id(judge(res))
    assert v["a"] == "not supported" and v["b"] == "not supported" and v["c"] == "not supported"
    assert v["d"] == "not supported" and v["e"] == "not supported"


def test_claims_inconclusive_on_noise_and_missing_runs():
    res = synthetic(acc_over_infl=0.85, acc_under_infl=0.85)
    assert by_id(judge(res))["a"] == "inconclusive"
    partial = aggregate([fake_run("over", "head", 1, 0.8)], {})
    assert all(c["verdict"] == "inconclusive" for c in judge(partial))


def test_plan_validation():
    with pytest.raises(ConfigError, match="unknown regime"):
        Plan(get_profile("smoke"), [1], ["sideways"], ["full"]).validate()
    with pytest.raises(ConfigError, match="unknown strategy"):
        Plan(get_profile("smoke"), [1], ["under"], ["magic"]).validate()
    with pytest.raises(ConfigError, match="unknown profile"):
        get_profile("huge")


@pytest.fixture(scope="module")
def smoke(tmp_path_factory, data_dir):
    out = tmp_path_factory.mktemp("smoke")
    plan = Plan(get_profile("smoke"), [42], ["under", "over"], STRATEGIES, str(data_dir))
    return out, plan, run_experiment(plan, out, progress=False)


@pytest.mark.real
def test_smoke_profile_end_to_end(smoke):
    from inflora.experiment.report import render

    out, plan, raw = smoke
    assert len(raw["targets"]) == 12 and set(raw["diagnoses"]) == {"under/42", "over/42"}
    res = aggregate(raw["targets"], raw["diagnoses"])
    render(
        res,
        {
            "command": "test",
            "profile": plan.profile.to_dict(),
            "seeds": [42],
            "wall_seconds": 1.0,
            "cached_units": 0,
            "computed_units": 15,
        },
        out,
    )
    data = json.loads((out / "results.json").read_text())
    assert {(r["regime"], r["strategy"]) for r in data["table"]} == {
        (g, s) for g in ("under", "over") for s in STRATEGIES
    }
    assert {c["id"] for c in data["claims"]["test"]} >= {"a", "b", "c", "d", "e"}
    assert set(data["grad_ratio"]) == {"shallow", "full"}
    for row in data["table"]:
        assert 0.0 <= row["test"]["mean"] <= 1.0 and len(row["profiles"]["delta_cka"]) == 6
    md = (out / "results.md").read_text()
    assert "Claims" in md and "lora-inflection − lora-random" in md
    assert "data:image/png;base64" in (out / "results.html").read_text()
    head = next(r for r in data["table"] if r["strategy"] == "head")
    full = next(r for r in data["table"] if r["strategy"] == "full")
    assert head["trainable_params"] < full["trainable_params"]


@pytest.mark.real
def test_source_table_reports_the_under_and_over_epochs_of_the_same_run(smoke):
    _, plan, raw = smoke
    res = aggregate(raw["targets"], raw["diagnoses"], raw["sources"])
    src = res["sources"][42]
    history = raw["sources"][42]["history"]
    assert (src["under"]["epoch"], src["over"]["epoch"]) == (plan.profile.under_epochs, plan.profile.over_epochs)
    assert src["over"]["sst2_validation_accuracy"] == history[-1]["validation_accuracy"]
    assert src["under"]["train_loss"] == history[plan.profile.under_epochs - 1]["train_loss"]


@pytest.mark.real
def test_cli_rerender_from_cache_is_logged_as_an_invocation(smoke, data_dir):
    from typer.testing import CliRunner

    from inflora.cli import app

    out, _, _ = smoke
    args = [
        "experiment",
        "sst2-to-rt",
        "--profile",
        "smoke",
        "--seeds",
        "42",
        "--data-dir",
        str(data_dir),
        "--out",
        str(out),
    ]
    for _ in range(2):
        res = CliRunner().invoke(app, args)
        assert res.exit_code == 0, res.output
    runs = json.loads((out / "invocations.json").read_text())
    assert len(runs) >= 2 and all(r["finished"] and r["units_after"] == 17 for r in runs[-2:])
    md = (out / "results.md").read_text()
    # 17 units: the source run + 2 regimes x (RT validation diagnosis + RT train probe + 6 targets)
    assert "units computed now 0, from cache 17" in md and f"All {len(runs)} invocations" in md
    assert "Source runs" in md


def test_trainable_column_shows_the_range_when_bands_differ_by_seed():
    from inflora.experiment.report import _trainable

    assert _trainable({"trainable_params": 10, "trainable_per_seed": {1: 10, 2: 10}}) == "10"
    assert (
        _trainable({"trainable_params": 2000, "trainable_per_seed": {1: 1000, 2: 3000}}) == "2,000 (mean; 1,000–3,000)"
    )


@pytest.mark.real
def test_interrupted_experiment_resumes_with_identical_results(smoke, tmp_path, monkeypatch, data_dir):
    import inflora.experiment.harness as harness

    ref_out, _, ref_raw = smoke
    plan = Plan(get_profile("smoke"), [42], ["over"], ["head", "lora-inflection"], str(data_dir))
    real_target = harness.run_target
    calls = []

    def interrupt_after_one(*args, **kw):
        if len(calls) == 1:
            raise KeyboardInterrupt
        calls.append(args[4])
        return real_target(*args, **kw)

    monkeypatch.setattr(harness, "run_target", interrupt_after_one)
    with pytest.raises(KeyboardInterrupt):
        run_experiment(plan, tmp_path, progress=False)
    finished = list((tmp_path / "units").glob("target-*/result.json"))
    assert len(finished) == 1

    import inflora.training as training

    monkeypatch.setattr(harness, "run_target", real_target)
    trained = []
    real_finetune = training.finetune
    monkeypatch.setattr(
        training, "finetune", lambda cfg, *a, **k: trained.append(cfg.strategy) or real_finetune(cfg, *a, **k)
    )
    raw = run_experiment(plan, tmp_path, progress=False)
    assert trained == ["lora-inflection"]  # the source, the diagnosis and the finished unit came from the cache
    ref = {(t["regime"], t["strategy"]): t for t in ref_raw["targets"]}
    for t in raw["targets"]:
        r = ref[(t["regime"], t["strategy"])]
        assert t["accuracy"] == r["accuracy"] and t["delta_cka"] == pytest.approx(r["delta_cka"], abs=1e-9)
        assert t["grad_profile"] == r["grad_profile"]


def test_an_interrupted_invocation_is_logged_with_its_time(tmp_path, monkeypatch):
    """Ctrl-C between units: the time spent still counts toward the experiment's total."""
    from typer.testing import CliRunner

    import inflora.experiment.harness as harness
    from inflora.cli import app

    def interrupted(plan, out, **kw):
        (out / "units" / "source-x").mkdir(parents=True)
        (out / "units" / "source-x" / "result.json").write_text("{}")
        raise KeyboardInterrupt

    monkeypatch.setattr(harness, "run_experiment", interrupted)
    res = CliRunner().invoke(app, ["experiment", "--profile", "smoke", "--seeds", "1", "--out", str(tmp_path)])
    assert res.exit_code == 130 and "run the same command again to resume" in res.output
    runs = json.loads((tmp_path / "invocations.json").read_text())
    assert len(runs) == 1 and runs[0]["finished"] is False
    assert (runs[0]["units_before"], runs[0]["units_after"]) == (0, 1) and runs[0]["wall_seconds"] >= 0


@pytest.mark.real
def test_rule_arms_at_k_blocks_with_forgetting(smoke, data_dir):
    from inflora.experiment.report import render

    tmp_path = smoke[0]  # the source run is cached there; only the diagnosis and two targets are new
    plan = Plan(get_profile("smoke"), [42], ["over"], ["lora-inflection", "lora-kappa"], str(data_dir), budget=2)
    raw = run_experiment(plan, tmp_path, progress=False)
    d = raw["diagnoses"]["over/42"]
    runs = {r["strategy"]: r for r in raw["targets"]}
    assert runs["lora-kappa"]["layers"] == d["rules"]["rules"]["kappa"]["selected"]
    assert runs["lora-inflection"]["layers"] == d["rules"]["rules"]["ski"]["selected"]
    assert {len(runs[s]["layers"]) for s in ("lora-inflection", "lora-kappa")} == {2}
    assert runs["lora-kappa"]["trainable_params"] == runs["lora-inflection"]["trainable_params"]
    for r in runs.values():
        assert 0.0 <= r["accuracy"]["retention"] <= 1.0  # SST-2 validation after RT training
    res = aggregate(raw["targets"], raw["diagnoses"], raw["sources"])
    source_acc = res["sources"][42]["over"]["sst2_validation_accuracy"]
    row = next(r for r in res["table"] if r["strategy"] == "lora-kappa")
    assert row["forgetting"]["per_seed"][42] == pytest.approx(source_acc - runs["lora-kappa"]["accuracy"]["retention"])
    render(
        res,
        {
            "command": "test",
            "profile": plan.profile.to_dict(),
            "seeds": [42],
            "wall_seconds": 1.0,
            "cached_units": 0,
            "computed_units": 4,
            "budget_layers": 2,
        },
        tmp_path,
    )
    md = (tmp_path / "results.md").read_text()
    assert "Forgetting: SST-2 validation accuracy" in md and "K = 2" in md
    rec = res["rule_recommendations"]["test"]["over"]
    assert rec["best_mean"] in ("ski", "kappa") and "one seed gives no interval" in rec["text"]
    assert "Which rule?" in md and "**OVER, full RT test:**" in md


# ---------------------------------------------------------------- output saturation and claim (g)


def fake_diagnosis(share, wrong, right, conf_wrong, layers=3):
    """A diagnosis dict with the wrong/right split of ‖∂L/∂h‖ and an output section."""
    total = share * wrong + (1 - share) * right
    rows = [
        {
            "layer": i,
            "activation_grad_norm": total * (i + 1),
            "wrong_token_share": share,
            "activation_grad_norm_wrong": wrong * (i + 1),
            "activation_grad_norm_correct": right * (i + 1),
        }
        for i in range(layers)
    ]
    output = {
        "accuracy": 1 - share,
        "mean_confidence": 0.9,
        "share_confidence_over_0.9": 0.5,
        "share_confidence_over_0.99": 0.2,
        "ece": 0.1,
        "grad_norm_correct": 0.1,
        "grad_norm_wrong": 1.2,
        "wrong_share": share,
        "wrong_confident_share": conf_wrong,
        "confident_wrong_grad_share": conf_wrong,
        "mean_grad_norm": share * 1.2 + (1 - share) * 0.1,
    }
    return {"layers": rows, "output": output, "inflection_layers": [1], "stability": [1, 1, 1]}


def saturation_case(under, over, seeds=(1, 2)):
    diags = {f"{g}/{s}": fake_diagnosis(*(under if g == "under" else over)) for s in seeds for g in ("under", "over")}
    return aggregate([], diags, None, diags)


def test_decomposition_terms_add_up_to_the_regime_difference():
    res = saturation_case(under=(0.1, 2.0, 0.5, 0.2), over=(0.3, 3.0, 0.4, 0.8))
    rows = res["saturation"]["decomposition"]
    assert {(r["seed"], r["split"]) for r in rows} == {(s, p) for s in (1, 2) for p in ("validation", "train")}
    for r in rows:
        for level in ("activation", "logits"):
            d = r[level]
            parts = d["share_of_wrong"] + d["gradient_per_wrong"] + d["gradient_per_right"]
            assert parts == pytest.approx(d["difference"], rel=1e-12)
            assert d["difference"] == pytest.approx(d["over"]["total"] - d["under"]["total"])
    act = rows[0]["activation"]  # layer means: (1 + 2 + 3) / 3 = 2 times the per-layer base
    assert act["under"]["total"] == pytest.approx(2 * (0.1 * 2.0 + 0.9 * 0.5))
    assert act["share_of_wrong"] == pytest.approx(0.2 * 2 * ((2.0 + 3.0) / 2 - (0.5 + 0.4) / 2))


def test_training_decomposition_leaves_only_the_step_covariance_as_residual():
    def run(regime, strategy, steps):
        rows = [
            {
                "step": i,
                "activation_grad_norm": [w * gw + (1 - w) * gc] * 2,
                "param_grad_norm": [1.0, 1.0],
                "wrong_token_share": w,
                "activation_grad_norm_wrong": [gw] * 2,
                "activation_grad_norm_correct": [gc] * 2,
                "output": {"wrong_confident_share": 0.5},
            }
            for i, (w, gw, gc) in enumerate(steps)
        ]
        return {**fake_run(regime, strategy, 1, 0.8), "grad_profile": rows}

    targets = [
        run("under", "full", [(0.2, 1.0, 0.1), (0.2, 1.0, 0.1)]),
        run("over", "full", [(0.4, 3.0, 0.1), (0.0, 1.0, 0.1)]),
        run("under", "head", [(0.2, 1.0, 0.1)]),
    ]
    rows = aggregate(targets, {})["saturation"]["training"]
    assert [r["strategy"] for r in rows] == ["full"]  # head has no OVER partner here and is not a ratio strategy
    d = rows[0]["activation"]
    assert d["under"]["total"] == pytest.approx(0.28) and d["over"]["total"] == pytest.approx(0.68)
    parts = d["share_of_wrong"] + d["gradient_per_wrong"] + d["gradient_per_right"] + d["residual"]
    assert parts == pytest.approx(d["difference"]) and d["residual"] != pytest.approx(0.0)


def test_confident_mistakes_claim_follows_the_numbers():
    supported = by_id(judge(saturation_case(under=(0.1, 2.0, 0.5, 0.2), over=(0.3, 3.0, 0.5, 0.8))))
    assert supported["g"] == "supported"
    # OVER larger only because right examples send more: the mistakes do not explain it
    refuted = by_id(judge(saturation_case(under=(0.2, 2.0, 0.5, 0.5), over=(0.2, 2.0, 1.5, 0.5))))
    assert refuted["g"] == "not supported"
    # OVER's ‖∂L/∂h‖ larger and carried by its confident mistakes, but it sends *less* gradient at the logits:
    # the network's transmission, not the mistakes, makes the difference
    res = saturation_case(under=(0.1, 2.0, 0.5, 0.2), over=(0.3, 3.0, 0.5, 0.8))
    for d in (*res["saturation"]["decomposition"],):
        d["logits"]["difference"], d["logits"]["ratio"] = -0.3, 0.5
    weaker = next(c for c in judge(res) if c["id"] == "g")
    assert weaker["verdict"] == "not supported" and "per unit of ‖p − y‖" in weaker["evidence"]
    # OVER not larger at all, or no RT-train diagnosis: inconclusive
    assert by_id(judge(saturation_case(under=(0.3, 3.0, 0.5, 0.8), over=(0.1, 2.0, 0.5, 0.2))))["g"] == "inconclusive"
    assert by_id(judge(synthetic()))["g"] == "inconclusive"


@pytest.mark.real
def test_smoke_experiment_reports_source_output_saturation(smoke):
    from inflora.experiment.report import render

    out, plan, raw = smoke
    assert set(raw["train_diagnoses"]) == {"under/42", "over/42"}
    for d in (*raw["diagnoses"].values(), *raw["train_diagnoses"].values()):
        assert d["output"]["predictions"] == plan.profile.diagnose_batches * plan.profile.diagnose_batch_size
        assert d["config"]["split"] in ("validation", "train")
    res = aggregate(raw["targets"], raw["diagnoses"], raw["sources"], raw["train_diagnoses"])
    sat = res["saturation"]
    assert {(r["split"], r["regime"]) for r in sat["outputs"]} == {
        (p, g) for p in ("validation", "train") for g in ("under", "over")
    }
    assert all(math.isfinite(r["ece"]) and 0 <= r["accuracy"] <= 1 for r in sat["outputs"])
    for r in sat["decomposition"]:
        d = r["logits"]
        if all(math.isfinite(d[k]) for k in ("share_of_wrong", "gradient_per_wrong", "gradient_per_right")):
            assert d["share_of_wrong"] + d["gradient_per_wrong"] + d["gradient_per_right"] == pytest.approx(
                d["difference"]
            )
    training = {r["strategy"]: r["activation"] for r in sat["training"]}
    assert set(training) == {"shallow", "full"}  # target-training profiles carry the wrong/right split
    for strategy, d in training.items():  # the same mean ‖∂L/∂h‖ that claim (d)'s ratio uses
        for regime in ("under", "over"):
            row = next(r for r in res["table"] if r["regime"] == regime and r["strategy"] == strategy)
            assert d[regime]["total"] == pytest.approx(row["mean_activation_grad"][42], rel=1e-9)
        assert math.isfinite(d["difference"])
    render(
        res,
        {
            "command": "test",
            "profile": plan.profile.to_dict(),
            "seeds": [42],
            "wall_seconds": 1.0,
            "cached_units": 0,
            "computed_units": 17,
        },
        out,
    )
    md = (out / "results.md").read_text()
    assert "Output saturation of the source checkpoints" in md and "share of wrong" in md and "residual" in md
    assert "(g) confident mistakes on RT explain" in md
