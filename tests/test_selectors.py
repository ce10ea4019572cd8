"""Peer selection rules (selectors.md): hand-checkable scores, directions, matched budgets, the
side-by-side comparison, and their bad input."""

import json
import math

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from inflora.cli import app
from inflora.diagnosis import diagnose, score_without_data
from inflora.errors import ConfigError
from inflora.metrics import io_cka, linear_cka
from inflora.models import get_blocks, tiny_model
from inflora.select import (
    BlockScores,
    RuleInputs,
    fit_band,
    random_blocks,
    score_rules,
    select_layers,
    within_type_percentile,
)
from inflora.select.alpha_hts import alpha_hts, hill_alpha, ks_distance
from inflora.select.kappa import condition_number
from inflora.select.spectrum_snr import spectrum_snr
from inflora.strategies import random_band
from inflora.strategies.budget import Budget, lora_params_per_rank, match_budget, rank_for_params
from inflora.strategies.lora import inject_lora

PEERS = ["top-grad", "low-grad", "low-entropy", "spectrum-snr", "kappa", "cka-io", "alpha-hts", "random", "all"]
runner = CliRunner()


def with_spectrum(s, m=None, n=None, seed=0):
    """A matrix with exactly the singular values ``s``."""
    m, n = m or len(s), n or len(s)
    g = torch.Generator().manual_seed(seed)
    u, _ = torch.linalg.qr(torch.randn(m, m, generator=g, dtype=torch.float64))
    v, _ = torch.linalg.qr(torch.randn(n, n, generator=g, dtype=torch.float64))
    d = torch.zeros(m, n, dtype=torch.float64)
    d[range(len(s)), range(len(s))] = torch.tensor(s, dtype=torch.float64)
    return u @ d @ v.T


# ------------------------------------------------------------------ hand-checkable scores


def test_spectrum_snr_of_a_known_spectrum():
    # S = [10, 1, 1, 1]: Q25 = 1, Q75 = 3.25, σ̂ = 2.25/1.349, β = 1, τ = 2σ̂ ≈ 3.34;
    # signal = 10, noise = 3, SNR = (10/3)/10 = 1/3
    s = torch.linalg.svdvals(with_spectrum([10.0, 1.0, 1.0, 1.0])).numpy()
    assert spectrum_snr(s, (4, 4)) == pytest.approx(1 / 3, rel=1e-9)
    # a flat spectrum: IQR 0, τ = 0, every value is signal, noise falls back to 1: SNR = 8/1/2 = 4
    assert spectrum_snr([2.0, 2.0, 2.0, 2.0], (4, 4)) == pytest.approx(4.0)
    # the rectangular threshold τ = σ̂(1 + √β) with β = 4/16 = 1/4: S = [8, 2, 1, 1]:
    # Q25 = 1, Q75 = 3.5, σ̂ = 2.5/1.349, τ = 1.5σ̂ ≈ 2.78: signal 8, noise 4, SNR = 2/8 = 0.25
    assert spectrum_snr([8.0, 2.0, 1.0, 1.0], (4, 16)) == pytest.approx(0.25)


def test_condition_number_of_a_diagonal_matrix():
    assert condition_number(
        torch.linalg.svdvals(torch.diag(torch.tensor([1.0, 2.0, 4.0], dtype=torch.float64)))
    ) == pytest.approx(4.0, rel=1e-7)


def test_kappa_rule_reads_the_block_weights(tmp_path):
    model = tiny_model("bert", layers=3, hidden=32)
    with torch.no_grad():
        get_blocks(model)[1].attention.self.query.weight.copy_(torch.diag(torch.arange(1.0, 33.0)))
    res = score_rules(["kappa"], RuleInputs(3, blocks=get_blocks(model)), 1)["rules"]["kappa"]
    assert res["per_module"]["1.attention.self.query"] == pytest.approx(32.0, rel=1e-6)
    assert res["direction"] == "low" and res["meta"]["n_svd"] == 3 * 6  # q, k, v, o, intermediate, output
    assert not any("LayerNorm" in k or "embeddings" in k for k in res["per_module"])


def test_cka_of_identical_and_orthogonal_features():
    x = torch.randn(20, 5, generator=torch.Generator().manual_seed(0))
    assert linear_cka(x, x) == pytest.approx(1.0)
    assert linear_cka(x, 3 * x + 1) == pytest.approx(1.0)  # invariant to scale and shift
    a = torch.tensor([[1.0], [-1.0], [0.0], [0.0]])
    b = torch.tensor([[0.0], [0.0], [1.0], [-1.0]])
    assert linear_cka(a, b) == pytest.approx(0.0)
    assert io_cka([x, x, a.repeat(5, 5)[:20]])[0] == pytest.approx(1.0)


def test_alpha_hill_ks_and_the_estimator_on_a_power_law_spectrum():
    assert hill_alpha([1.0, math.e, math.e**2]) == pytest.approx(2.0)  # 1 + 3/(0 + 1 + 2)
    # exact Pareto quantiles with exponent α: the fitted CDF matches, distance ≈ 1/n
    for alpha in (2.0, 3.0, 4.0):
        n = 400
        lam = (1 - np.arange(n) / n) ** (-1 / (alpha - 1))
        assert ks_distance(lam, alpha) < 2 / n
        assert alpha_hts(np.sqrt(lam)) == pytest.approx(alpha, rel=0.02)


def test_within_type_percentile_never_mixes_types():
    values = [{"a": 1.0, "b": 300.0}, {"a": 2.0, "b": 100.0}, {"a": 3.0, "b": 200.0}]
    # a ranks 0, .5, 1; b ranks 1, 0, .5
    assert within_type_percentile(values) == pytest.approx([0.5, 0.25, 0.75])
    assert math.isnan(within_type_percentile([{"a": 1.0}, {}])[1])


# ------------------------------------------------------------------ directions and selection


def test_select_applies_the_direction_with_nan_last_and_ties_low():
    assert BlockScores("x", [3.0, 1.0, 2.0, float("nan")], "high").select(2) == [0, 2]
    assert BlockScores("x", [3.0, 1.0, 2.0, float("nan")], "low").select(2) == [1, 2]
    assert BlockScores("x", [1.0, 1.0, 1.0], "high").select(2) == [0, 1]
    assert BlockScores("x", [1.0, 5.0, 2.0, 0.0], "low").select(2, skip_best=1) == [0, 2]  # CKA's encoder mode


def test_single_signal_rules_on_a_hand_made_profile():
    entropy, grad = [2.0, 1.0, 3.0, 1.5], [1e-3, 5e-4, 2e-4, 9e-4]
    assert select_layers("top-grad", entropy, grad, k=2) == [0, 3]
    assert select_layers("low-grad", entropy, grad, k=2) == [1, 2]
    assert select_layers("low-entropy", entropy, grad, k=2) == [1, 3]


def test_random_rule_is_lora_randoms_draw_and_all_ignores_k():
    res = score_rules(["random", "all"], RuleInputs(12, seed=43), 3)["rules"]
    assert res["random"]["selected"] == random_band(12, 3, 43) == random_blocks(12, 3, 43)
    assert res["all"]["selected"] == list(range(12))


def test_ski_band_is_trimmed_or_extended_to_k_by_score():
    score = [0.9, 0.2, 0.8, 0.7, 0.1]
    assert fit_band([0, 1, 2], score, 2) == [0, 2]
    assert fit_band([1], score, 3) == [0, 1, 2]


# ------------------------------------------------------------------ matched budgets


def _tiny_batches(n=2, b=4, t=8):
    g = torch.Generator().manual_seed(0)
    return [
        {
            "input_ids": torch.randint(5, 1000, (b, t), generator=g),
            "attention_mask": torch.ones(b, t, dtype=torch.long),
            "labels": torch.arange(b) % 2,
        }
        for _ in range(n)
    ]


@pytest.fixture(scope="module")
def tiny_rules():
    model = tiny_model("bert", layers=4, hidden=32)
    d = diagnose(model, _tiny_batches(), rules=["ski", *PEERS], budget=Budget(layers=2), progress=False, resamples=5)
    return model, d


def test_every_rule_picks_the_same_k_and_the_same_count(tiny_rules):
    _, d = tiny_rules
    rules = d.rules["rules"]
    assert set(rules) == {"ski", *PEERS} and d.rules["k"] == 2
    assert {len(r["selected"]) for n, r in rules.items() if n != "all"} == {2} and len(rules["all"]["selected"]) == 4
    assert {r["lora_params"] for n, r in rules.items() if n != "all"} == {8 * 2 * 3 * 64}  # r·blocks·(q,k,v)·(32+32)
    assert all(math.isfinite(v) for v in rules["cka-io"]["raw"]) and d.layers[0]["io_cka"] == rules["cka-io"]["raw"][0]
    assert d.rules["overlap"]["all"]["ski"] == pytest.approx(0.5)


def test_param_budget_matches_counts_within_one_rank_step():
    model = tiny_model("bert", layers=4, hidden=32)
    sel = {"two": [0, 3], "all": [0, 1, 2, 3], "one": [2]}
    sizes = match_budget(model, sel, Budget(params=5000))
    steps = {n: lora_params_per_rank(model, layers) for n, layers in sel.items()}
    for n, s in sizes.items():
        assert 0 <= 5000 - s["lora_params"] < steps[n]  # never over; under by less than one rank step
    assert sizes["all"]["r"] < sizes["two"]["r"] < sizes["one"]["r"]
    # the count is PEFT's own trainable LoRA parameter count
    peft = inject_lora(tiny_model("bert", layers=4, hidden=32), [0, 3], r=sizes["two"]["r"])
    lora = sum(p.numel() for n, p in peft.named_parameters() if "lora_" in n and p.requires_grad)
    assert lora == sizes["two"]["lora_params"]
    # other targets (#12's presets) are counted as PEFT adapts them: "attention" adds attention.output.dense,
    # but not the FFN's output.dense that a plain suffix match would also hit
    assert lora_params_per_rank(model, [1], ["attention"]) == 4 * 64
    assert lora_params_per_rank(model, [1], ["all"]) == 4 * 64 + 2 * (32 + 64)
    peft = inject_lora(tiny_model("bert", layers=4, hidden=32), [1], r=3, targets=["all"])
    assert sum(p.numel() for n, p in peft.named_parameters() if "lora_" in n) == 3 * lora_params_per_rank(
        model, [1], ["all"]
    )


@pytest.mark.parametrize(
    "text,message",
    [
        ("layers", "--budget expects layers=K, params=N"),
        ("depth=2", "--budget expects layers=K, params=N"),
        ("params=abc", "needs a whole number"),
        ("layers=0", "needs a whole number >= 1"),
    ],
)
def test_budget_parse_errors(text, message):
    with pytest.raises(ConfigError, match=message):
        Budget.parse(text)
    assert Budget.parse("params=1.5k") == Budget(params=1500)
    assert Budget.parse("layers=2,params=2M") == Budget(layers=2, params=2_000_000)


def test_a_param_budget_no_rank_can_meet():
    with pytest.raises(ConfigError, match="no rank can meet it"):
        rank_for_params(tiny_model("bert", layers=4, hidden=32), [0, 1], 100)


def test_weight_rules_refuse_meta_weights_and_data_rules_refuse_no_data():
    with torch.device("meta"):
        model = tiny_model("bert", layers=2, hidden=32)
    with pytest.raises(ConfigError, match="meta device") as exc:
        score_without_data(model, ["kappa"], Budget(layers=1))
    assert "\n" not in str(exc.value)
    with pytest.raises(ConfigError, match="rule 'top-grad' needs data"):
        score_without_data(tiny_model("bert", layers=2, hidden=32), ["top-grad"], Budget(layers=1))
    with pytest.raises(ConfigError, match="needs data"):
        score_rules(["cka-io"], RuleInputs(2), 1)


# ------------------------------------------------------------------ command line


@pytest.fixture
def tiny_dir(tiny_bert_dir):
    return tiny_bert_dir


def test_weights_only_cli_needs_no_data(tiny_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("INFLORA_DATA_DIR", str(tmp_path / "nowhere"))
    res = runner.invoke(
        app,
        [
            "diagnose",
            "--model",
            str(tiny_dir),
            "--rules",
            "spectrum-snr,kappa,alpha-hts,random,all",
            "--weights-only",
            "--budget",
            "layers=2",
            "--out",
            str(tmp_path),
        ],
    )
    assert res.exit_code == 0, res.output
    out = json.loads((tmp_path / "rules.json").read_text())
    assert out["k"] == 2 and set(out["rules"]) == {"spectrum-snr", "kappa", "alpha-hts", "random", "all"}
    assert "Rules side by side" in (tmp_path / "rules.md").read_text() and "overlap" in res.output


def _fits_80_columns(text: str) -> None:
    for line in text.splitlines():
        assert len(line) <= 80 and "…" not in line, line


def test_every_rule_side_by_side_fits_80_columns(tiny_rules):
    from rich.console import Console

    from inflora.cli.diagnose import _overlap_table, _rules_table

    _, d = tiny_rules
    console = Console(width=80, record=True)
    console.print(_rules_table(d.rules, d.num_layers))
    console.print(_overlap_table(d.rules))
    text = console.export_text()
    _fits_80_columns(text)
    assert (
        len(d.rules["rules"]) >= 10
        and "spectrum-snr" in text
        and "●" in text
        and f"{len(d.rules['rules'])} all" in text
    )


def test_a_deep_model_gets_block_ranges_in_80_columns(tmp_path, tokenizer):
    deep = tmp_path / "deep"
    tiny_model("bert", layers=16, hidden=32).bert.save_pretrained(deep)
    tokenizer.save_pretrained(deep)
    res = runner.invoke(
        app,
        [
            "diagnose",
            "--model",
            str(deep),
            "--rules",
            "spectrum-snr,kappa,alpha-hts,random,all",
            "--weights-only",
            "--budget",
            "layers=3",
            "--out",
            str(tmp_path / "out"),
        ],
        env={"COLUMNS": "80"},
    )
    assert res.exit_code == 0, res.output
    _fits_80_columns(res.output)
    assert "blocks" in res.output and "●" not in res.output and "0-15" in res.output  # `all` keeps every block


@pytest.mark.parametrize(
    "args,message",
    [
        (["--rules", "ski,nope"], "unknown selection rule 'nope'; choose one of: all, alpha-hts"),
        (
            ["--rules", "kappa", "--weights-only", "--budget", "layers=5"],
            "a budget of 5 blocks is impossible for a 4-block model",
        ),
        (["--rules", "kappa", "--weights-only", "--budget", "layers=0"], "needs a whole number >= 1"),
        (["--rules", "kappa", "--weights-only", "--budget", "layers=2,params=10"], "no rank can meet it"),
        (["--rules", "kappa", "--weights-only", "--budget", "params=10"], "give --budget layers=K"),
        (["--rules", "kappa,top-grad", "--weights-only", "--budget", "layers=2"], "rule 'top-grad' needs data"),
        (["--rules", "cka-io", "--weights-only", "--budget", "layers=2"], "rule 'cka-io' needs data"),
        (["--weights-only"], "--weights-only needs --rules"),
    ],
)
def test_rule_bad_input_is_one_line_error(args, message, tiny_dir, tmp_path):
    res = runner.invoke(app, ["diagnose", "--model", str(tiny_dir), *args, "--out", str(tmp_path)])
    assert res.exit_code == 2, res.output
    assert message in res.output and "Traceback" not in res.output
    assert len([line for line in res.output.splitlines() if line.startswith("error:")]) == 1


def test_finetune_lisa_and_rule_arm_bad_input(tiny_dir, tmp_path):
    from inflora.diagnosis import Diagnosis

    d = diagnose(tiny_model("bert", layers=4, hidden=32), _tiny_batches(), progress=False, resamples=2)
    d.to_json(tmp_path / "plain.json")
    for args, message in (
        (["--strategy", "lisa", "--lisa-interval", "0"], "--lisa-interval must be at least 1"),
        (["--strategy", "lora-kappa", "--diagnosis", tmp_path / "plain.json"], "has no selection by rule 'kappa'"),
    ):
        res = runner.invoke(
            app,
            [
                "finetune",
                "--model",
                str(tiny_dir),
                "--limit-train",
                "16",
                "--limit-eval",
                "16",
                *map(str, args),
                "--out",
                str(tmp_path / "ft"),
            ],
        )
        assert res.exit_code == 2 and message in res.output and "Traceback" not in res.output, res.output
    assert Diagnosis.from_json(tmp_path / "plain.json").rules == {}


# ------------------------------------------------------------------ the real MiniLM on RT validation


@pytest.mark.real
def test_every_rule_runs_on_real_minilm_rt_validation(minilm, data_dir):
    model, tok = minilm
    d = diagnose(
        model,
        "rotten_tomatoes",
        tok,
        batches=2,
        batch_size=16,
        max_length=32,
        resamples=5,
        data_dir=str(data_dir),
        progress=False,
        rules=["ski", *PEERS],
        budget=Budget(layers=2),
    )
    rules = d.rules["rules"]
    for name in PEERS:
        assert len(rules[name]["selected"]) == (6 if name == "all" else 2), name
        if name not in ("random", "all"):
            assert all(math.isfinite(v) for v in rules[name]["raw"]), name
    assert rules["top-grad"]["selected"] != rules["low-grad"]["selected"]  # opposite ends of one profile
    assert all(0 < v <= 1 for v in rules["cka-io"]["raw"])


# ------------------------------------------------------------------ lisa and lora-<rule> as finetune strategies


def test_lisa_schedule_is_seeded_per_interval_and_freezes_the_rest():
    from inflora.strategies import StrategyOptions, apply_strategy

    model = tiny_model("bert", layers=4, hidden=32)
    applied = apply_strategy("lisa", model, StrategyOptions(k=2, seed=7, extra={"lisa_interval": 3}))
    sched = applied.schedule
    assert all(p.requires_grad for p in model.parameters())  # the optimizer is built over every block
    assert sched.blocks_at(0) == sched.blocks_at(2) and len(sched.blocks_at(3)) == 2
    draws = {tuple(sched.blocks_at(3 * i)) for i in range(20)}
    assert len(draws) > 1  # resampled
    sched.before_step(3)
    blocks = get_blocks(model)
    for i, b in enumerate(blocks):
        assert all(p.requires_grad == (i in sched.blocks_at(3)) for p in b.parameters())
    assert model.bert.embeddings.word_embeddings.weight.requires_grad and model.classifier.weight.requires_grad
    per_block = sum(p.numel() for p in blocks[0].parameters())
    total = sum(p.numel() for p in model.parameters())
    assert sched.trainable_params(total) == total - 2 * per_block
    with pytest.raises(ConfigError, match="lisa needs 1 <= k <= 4"):
        apply_strategy("lisa", tiny_model("bert", layers=4, hidden=32), StrategyOptions(k=5))


@pytest.mark.real
def test_lisa_and_a_rule_arm_finetune_on_real_minilm(tmp_path, data_dir, minilm):
    from inflora.training import FinetuneConfig, finetune

    common = dict(
        model="minilm",
        task="rotten_tomatoes",
        epochs=1,
        limit_train=64,
        limit_eval=32,
        batch_size=16,
        max_length=32,
        cka_examples=0,
        decontaminate_against=None,
        log_every=1,
        data_dir=str(data_dir),
    )
    m = finetune(FinetuneConfig(strategy="lisa", k=2, lisa_interval=2, **common), tmp_path / "lisa", progress=False)
    assert m["steps"] == 4 and 0 <= m["accuracy"]["test"] <= 1
    # in each logged step, exactly two blocks received parameter gradients, and they changed at step 2
    active = [[i for i, v in enumerate(row["param_grad_norm"]) if v > 0] for row in m["grad_profile"]]
    assert all(len(a) == 2 for a in active) and active[0] == active[1] and active[2] == active[3]
    d = diagnose(
        minilm[0],
        "rotten_tomatoes",
        minilm[1],
        batches=1,
        batch_size=8,
        max_length=32,
        progress=False,
        data_dir=str(data_dir),
        rules=["kappa"],
        budget=Budget(layers=2),
        resamples=2,
    )
    d.to_json(tmp_path / "d.json")
    arm = finetune(
        FinetuneConfig(strategy="lora-kappa", diagnosis=str(tmp_path / "d.json"), **common),
        tmp_path / "k",
        progress=False,
    )
    assert arm["layers"] == d.rules["rules"]["kappa"]["selected"]


def test_head_warmup_trains_only_the_head_before_probing(tokenizer, data_dir):
    from inflora.data import load_task

    model = tiny_model("bert", layers=2, hidden=32)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    val = load_task("rotten_tomatoes", "validation", str(data_dir))
    d = diagnose(
        model,
        val,
        tokenizer,
        batches=1,
        batch_size=8,
        max_length=32,
        progress=False,
        resamples=2,
        head_warmup=3,
        data_dir=str(data_dir),
    )
    info = d.config["head_warmup"]
    assert info["steps"] == 3 and math.isfinite(info["first_loss"]) and math.isfinite(info["last_loss"])
    changed = {k for k, v in model.state_dict().items() if not torch.equal(v, before[k])}
    assert changed and all(k.startswith(("classifier", "bert.pooler")) for k in changed)
    assert all(p.requires_grad for p in model.parameters())  # restored
    with pytest.raises(ConfigError, match="--head-warmup needs training data"):
        diagnose(model, _tiny_batches(), progress=False, resamples=2, head_warmup=2)
