"""Fine-tuning machinery: strategies, repeatability, resume, failure modes, metrics, --init.

Runs use a tiny 6-block BERT (MiniLM's depth) saved with the MiniLM tokenizer, on stratified
subsets of the real Rotten Tomatoes data; one test uses the real MiniLM (marked ``real``).
"""

import importlib
import math
import re

import pytest
import torch
import transformers
from safetensors.torch import load_file

from inflora.data import EncodedSplit, TextDataset, load_task
from inflora.errors import ConfigError, DataError, TrainingError
from inflora.validate import load_json
from inflora.models import get_blocks, load_model, tiny_model
from inflora.strategies import StrategyOptions, apply_strategy, count_parameters, random_band
from inflora.training import FinetuneConfig, finetune
from inflora.training.parts import build_optimizer as _optimizer
from inflora.training.profiles import cka_features

finetune_module = importlib.import_module("inflora.training.parts")

transformers.logging.set_verbosity_error()
transformers.utils.logging.disable_progress_bar()

LAYERS, HIDDEN, R = 6, 32, 8
REQUIRED_KEYS = {
    "strategy",
    "layers",
    "trainable_params",
    "total_params",
    "accuracy",
    "best_epoch",
    "train_seconds",
    "steps_per_second",
    "peak_rss_mb",
    "grad_profile",
    "delta_cka",
    "config",
    "versions",
}
SAME = ("accuracy", "history", "grad_profile", "delta_cka", "best_epoch", "steps", "trainable_params", "layers")


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory, tokenizer):
    """A tiny BERT classifier body (no classification head saved: like a pretrained encoder) + tokenizer."""
    path = tmp_path_factory.mktemp("tiny") / "bert6"
    tiny_model("bert", layers=LAYERS, hidden=HIDDEN, heads=4).bert.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def config(tiny_dir, **kw) -> FinetuneConfig:
    base = dict(
        model=str(tiny_dir),
        strategy="lora-inflection",
        layers=[0, 1],
        epochs=2,
        limit_train=64,
        limit_eval=32,
        max_length=32,
        cka_examples=32,
        batch_size=16,
        log_every=2,
        lr=5e-3,
        diagnose_batches=2,
    )
    return FinetuneConfig(**{**base, **kw})


@pytest.fixture(scope="module")
def reference(tiny_dir, tmp_path_factory):
    """An uninterrupted 2-epoch lora-inflection run: the numbers every other run is compared with."""
    out = tmp_path_factory.mktemp("ref")
    return out, finetune(config(tiny_dir), out, progress=False)


def head_params(h: int, labels: int = 2) -> int:
    return (h * h + h) + (h * labels + labels)  # pooler + classifier


def lora_params(blocks: int, h: int, r: int = R) -> int:
    return blocks * 3 * (r * h + h * r)  # q, k, v: A (r x h) and B (h x r), no bias


def lora_blocks(model) -> set[int]:
    return {
        int(m.group(1)) for n, _ in model.named_parameters() if "lora_" in n for m in [re.search(r"layer\.(\d+)\.", n)]
    }


def trainable_names(model) -> set[str]:
    return {n for n, p in model.named_parameters() if p.requires_grad}


def one_line(exc: pytest.ExceptionInfo) -> str:
    msg = str(exc.value)
    assert msg and "\n" not in msg, msg
    return msg


# ---------------------------------------------------------------------------------------------- strategies
def test_trainable_parameter_counts_and_placement():
    """Exact counts per strategy on a MiniLM-deep tiny model, their order, LoRA only on the chosen blocks,
    classifier and pooler trainable everywhere."""
    counts, totals, total = {}, {}, None
    for name, opt in [
        ("head", {}),
        ("lora-inflection", {"layers": [0, 2, 3]}),
        ("lora-all", {}),
        ("shallow", {"k": 2}),
        ("full", {}),
    ]:
        model = tiny_model("bert", layers=LAYERS, hidden=HIDDEN, heads=4)
        total = total or count_parameters(model)[1]
        applied = apply_strategy(name, model, StrategyOptions(**opt))
        counts[name], totals[name] = count_parameters(applied.model)
        names = trainable_names(applied.model)
        assert any("classifier" in n for n in names) and any("pooler" in n for n in names), name
        if name.startswith("lora"):
            assert lora_blocks(applied.model) == set(applied.layers)
            assert all("lora_" in n or "modules_to_save" in n for n in names), sorted(names)
    block = count_parameters(get_blocks(tiny_model("bert", layers=LAYERS, hidden=HIDDEN, heads=4))[0])[1]
    assert counts == {
        "head": head_params(HIDDEN),
        "lora-inflection": lora_params(3, HIDDEN) + head_params(HIDDEN),
        "lora-all": lora_params(LAYERS, HIDDEN) + head_params(HIDDEN),
        "shallow": 2 * block + head_params(HIDDEN),
        "full": total,
    }
    assert counts["head"] < counts["lora-inflection"] < counts["lora-all"] < counts["shallow"] < counts["full"]
    # the total is the model that runs: the base plus LoRA factors, not PEFT's frozen head copies
    assert totals == {
        "head": total,
        "lora-inflection": total + lora_params(3, HIDDEN),
        "lora-all": total + lora_params(LAYERS, HIDDEN),
        "shallow": total,
        "full": total,
    }


def test_shallow_unfreezes_the_top_k_blocks_only():
    applied = apply_strategy("shallow", tiny_model("bert", layers=LAYERS, hidden=HIDDEN, heads=4), StrategyOptions(k=3))
    assert applied.layers == [3, 4, 5]
    blocks = {int(m.group(1)) for n in trainable_names(applied.model) for m in [re.search(r"layer\.(\d+)\.", n)] if m}
    assert blocks == {3, 4, 5}
    with pytest.raises(ConfigError, match="k"):
        apply_strategy("shallow", tiny_model("bert", layers=2), StrategyOptions(k=3))


@pytest.mark.parametrize("name", ["full", "head", "shallow", "lora-all", "lora-inflection", "lora-random"])
def test_one_optimizer_step_changes_exactly_the_trainable_parameters(name, tokenizer):
    model = tiny_model("bert", layers=LAYERS, hidden=HIDDEN, heads=4)
    applied = apply_strategy(name, model, StrategyOptions(layers=[1, 4], seed=3))
    model = applied.model.train()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    batch = tokenizer(["a fine film .", "dull and lifeless"], padding=True, return_tensors="pt")
    opt = _optimizer(model, 1e-2, 0.0)
    assert {id(p) for g in opt.param_groups for p in g["params"]} == {
        id(p) for p in model.parameters() if p.requires_grad
    }
    model(**batch, labels=torch.tensor([1, 0])).loss.backward()
    opt.step()
    changed = {n for n, p in model.named_parameters() if not torch.equal(p.detach(), before[n])}
    got_grad = {n for n, p in model.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}
    assert changed == got_grad  # no weight decay: exactly the parameters with a gradient move
    assert changed <= trainable_names(model)
    assert {int(m.group(1)) for n in changed for m in [re.search(r"layer\.(\d+)\.", n)] if m} == set(applied.layers)


def test_sgd_is_plain_gradient_descent_and_unknown_optimizers_are_refused(tiny_dir, tmp_path, tokenizer):
    from inflora.remedies import REMEDIES

    model = apply_strategy("full", tiny_model("bert", layers=LAYERS, hidden=HIDDEN, heads=4), StrategyOptions()).model
    opt = _optimizer(model, 0.1, 0.0, kind="sgd")
    batch = tokenizer(["a fine film .", "dull and lifeless"], padding=True, return_tensors="pt")
    model(**batch, labels=torch.tensor([1, 0])).loss.backward()
    expected = {n: (p - 0.1 * p.grad).detach() for n, p in model.named_parameters() if p.grad is not None}
    opt.step()
    assert all(torch.allclose(p, expected[n], atol=1e-7) for n, p in model.named_parameters() if n in expected)
    with pytest.raises(ConfigError, match="own optimizer"):
        _optimizer(model, 0.1, 0.0, [REMEDIES.get("spam").from_options()], kind="sgd")
    with pytest.raises(ConfigError, match="unknown optimizer 'adam'"):
        finetune(config(tiny_dir, optimizer="adam"), tmp_path / "run", progress=False)
    assert not (tmp_path / "run").exists()


def test_unknown_strategy_is_a_one_line_config_error(tiny_dir, tmp_path):
    with pytest.raises(ConfigError) as exc:
        finetune(config(tiny_dir, strategy="lora-everywhere"), tmp_path / "run", progress=False)
    assert "lora-everywhere" in one_line(exc) and "lora-inflection" in str(exc.value)
    assert not (tmp_path / "run").exists()  # rejected before anything was written
    with pytest.raises(ConfigError, match="unknown strategy"):
        apply_strategy("nope", tiny_model("bert", layers=2))


def test_lora_random_band_is_seeded_and_as_large_as_the_inflection_band():
    for size in (1, 3, 5):
        for seed in range(5):
            band = random_band(LAYERS, size, seed)
            assert band == random_band(LAYERS, size, seed)
            assert len(band) == len(set(band)) == size and all(0 <= i < LAYERS for i in band) and band == sorted(band)
    assert len({tuple(random_band(LAYERS, 3, s)) for s in range(20)}) > 3  # the seed matters
    applied = apply_strategy(
        "lora-random",
        tiny_model("bert", layers=LAYERS, hidden=HIDDEN, heads=4),
        StrategyOptions(layers=[0, 1, 4], seed=7),
    )
    assert applied.layers == random_band(LAYERS, 3, 7) and lora_blocks(applied.model) == set(applied.layers)
    with pytest.raises(ConfigError, match="band"):
        apply_strategy("lora-random", tiny_model("bert", layers=2), StrategyOptions())


@pytest.mark.parametrize("name", ["full", "head", "shallow", "lora-all", "lora-inflection", "lora-random"])
def test_every_strategy_trains_end_to_end_where_it_should(name, tiny_dir, tmp_path):
    """In a real run, the logged parameter gradients are non-zero exactly on the strategy's blocks."""
    cfg = config(
        tiny_dir,
        strategy=name,
        layers=[0, 2],
        epochs=1,
        limit_train=32,
        log_every=1,
        lr=None,
        decontaminate_against=None,
    )
    m = finetune(cfg, tmp_path, progress=False)
    expected = {
        "full": list(range(LAYERS)),
        "head": [],
        "shallow": [4, 5],
        "lora-all": list(range(LAYERS)),
        "lora-inflection": [0, 2],
        "lora-random": random_band(LAYERS, 2, cfg.seed),
    }[name]
    assert m["layers"] == expected and m["strategy"] == name
    assert m["lr"] == {"full": 2e-5, "head": 1e-3, "shallow": 2e-5}.get(name, 5e-4)
    assert len(m["grad_profile"]) == 2  # 32 examples / 16 per batch, every step logged
    for row in m["grad_profile"]:
        assert [i for i, v in enumerate(row["param_grad_norm"]) if v > 0] == expected
        assert row["param_grad_norm_head"] > 0
        assert (row["param_grad_norm_embeddings"] > 0) == (name == "full")
        assert all(math.isfinite(v) and v > 0 for v in row["activation_grad_norm"])


# ---------------------------------------------------------------------------------------------- runs
def test_metrics_json_has_every_required_key(reference, tiny_dir):
    out, m = reference
    on_disk = load_json(out / "metrics.json")
    assert REQUIRED_KEYS <= set(on_disk)
    assert on_disk["config"] == config(tiny_dir).to_dict()
    assert set(on_disk["accuracy"]) == {"validation", "test", "test_decontaminated"}
    assert all(0 <= v <= 1 for v in on_disk["accuracy"].values())
    assert on_disk["accuracy"]["validation"] == max(h["validation_accuracy"] for h in m["history"])
    assert on_disk["best_epoch"] in (1, 2) and [h["epoch"] for h in m["history"]] == [1, 2]
    assert on_disk["strategy"] == "lora-inflection" and on_disk["layers"] == [0, 1]
    assert on_disk["trainable_params"] == lora_params(2, HIDDEN) + head_params(HIDDEN)
    assert on_disk["trainable_params"] < on_disk["total_params"]
    assert on_disk["train_seconds"] > 0 and on_disk["steps_per_second"] > 0 and on_disk["peak_rss_mb"] > 50
    assert on_disk["steps"] == 8 and [r["step"] for r in on_disk["grad_profile"]] == [0, 2, 4, 6]
    for row in on_disk["grad_profile"]:
        assert len(row["activation_grad_norm"]) == len(row["param_grad_norm"]) == LAYERS
        assert all(math.isfinite(v) for v in row["activation_grad_norm"] + row["param_grad_norm"])
        o = row["output"]  # output saturation of the logged step's own batch
        assert o["predictions"] == on_disk["config"]["batch_size"] and 0 <= o["accuracy"] <= 1 and 0 <= o["ece"] <= 1
        assert len(row["activation_grad_norm_wrong"]) == LAYERS and 0 <= row["wrong_token_share"] <= 1
    assert len(on_disk["delta_cka"]) == LAYERS and all(math.isfinite(v) for v in on_disk["delta_cka"])
    assert {"torch", "transformers", "peft", "python"} <= set(on_disk["versions"])
    assert on_disk["sizes"]["train"] == 64 and on_disk["sizes"]["validation"] == 32


def test_same_seed_same_numbers_on_cpu(reference, tiny_dir, tmp_path):
    ref_out, ref = reference
    again = finetune(config(tiny_dir), tmp_path / "again", progress=False)
    for key in SAME:
        assert again[key] == ref[key], key
    a, b = (
        load_file(tmp_path / "again/checkpoints/best.safetensors"),
        load_file(ref_out / "checkpoints/best.safetensors"),
    )
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    other = finetune(config(tiny_dir, seed=43), tmp_path / "other-seed", progress=False)
    assert other["grad_profile"] != ref["grad_profile"]  # the comparison above is sensitive to the seed


def test_resume_after_interruption_ends_exactly_like_an_uninterrupted_run(reference, tiny_dir, tmp_path):
    ref_out, ref = reference
    out = tmp_path / "run"
    seen = []

    def interrupt(epoch):
        seen.append(epoch)
        raise KeyboardInterrupt  # as a killed process: nothing after the epoch-1 checkpoint happens

    with pytest.raises(KeyboardInterrupt):
        finetune(config(tiny_dir), out, progress=False, on_epoch_end=interrupt)
    assert seen == [1] and not (out / "metrics.json").exists()
    assert load_json(out / "checkpoints/last/meta.json")["epoch"] == 1
    with pytest.raises(ConfigError, match="unfinished run with a different configuration"):
        finetune(config(tiny_dir, lr=1e-3), out, progress=False)

    resumed = finetune(config(tiny_dir), out, progress=False, on_epoch_end=seen.append)
    assert seen == [1, 2]  # only epoch 2 was trained again
    for key in SAME:
        assert resumed[key] == ref[key], key
    a = load_file(out / "checkpoints/last/trainable.safetensors")
    b = load_file(ref_out / "checkpoints/last/trainable.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_finished_run_returns_at_once_and_other_configs_are_refused(reference, tiny_dir, monkeypatch):
    out, ref = reference

    def must_not_run(*a, **k):
        raise AssertionError("a finished run must not load data or train again")

    monkeypatch.setattr(finetune_module, "load_splits", must_not_run)
    again = finetune(config(tiny_dir), out, progress=False, on_epoch_end=must_not_run)
    assert again == load_json(out / "metrics.json") and again["accuracy"] == ref["accuracy"]
    with pytest.raises(ConfigError, match="finished run with a different configuration") as exc:
        finetune(config(tiny_dir, seed=1), out, progress=False)
    one_line(exc)


# ---------------------------------------------------------------------------------------------- failures
@pytest.fixture
def poison(monkeypatch):
    """Models that ``finetune`` loads get a hook making the embedding output non-finite while
    ``poison['on']``: the next training step's loss is NaN, with no change to the code under test."""
    state = {"on": False}
    real = finetune_module.load_model

    def load(*args, **kwargs):
        model, tok = real(*args, **kwargs)
        model.bert.embeddings.register_forward_hook(
            lambda m, a, o: o * float("inf") if state["on"] and m.training else None
        )
        return model, tok

    monkeypatch.setattr(finetune_module, "load_model", load)
    return state


def test_non_finite_loss_stops_naming_the_step_and_keeps_the_last_good_checkpoint(
    reference, tiny_dir, tmp_path, poison, monkeypatch
):
    out = tmp_path / "run"
    with pytest.raises(TrainingError) as exc:
        finetune(config(tiny_dir), out, progress=False, on_epoch_end=lambda e: poison.update(on=True))
    msg = one_line(exc)
    assert "step 4 (epoch 2)" in msg and str(out / "checkpoints" / "last") in msg  # 64 / 16 = 4 steps per epoch
    meta = load_json(out / "checkpoints/last/meta.json")
    assert meta["epoch"] == 1 and meta["steps"] == 4
    kept = load_file(out / "checkpoints/last/trainable.safetensors")
    assert kept and all(torch.isfinite(t).all() for t in kept.values())
    assert not (out / "metrics.json").exists()

    # The kept checkpoint is a good one: without the fault, re-running resumes and matches the reference.
    poison["on"] = False
    resumed = finetune(config(tiny_dir), out, progress=False)
    for key in SAME:
        assert resumed[key] == reference[1][key], key


def test_non_finite_loss_in_the_first_epoch_says_there_is_no_checkpoint(tiny_dir, tmp_path, poison):
    poison["on"] = True
    with pytest.raises(TrainingError) as exc:
        finetune(config(tiny_dir), tmp_path, progress=False)
    msg = one_line(exc)
    assert "step 0 (epoch 1)" in msg and "none (first epoch)" in msg


@pytest.fixture(scope="module")
def three_label_dir(tmp_path_factory, tokenizer):
    path = tmp_path_factory.mktemp("three") / "bert3"
    model = tiny_model("bert", layers=2, hidden=HIDDEN, heads=4)
    model.config.num_labels = 3
    model = type(model)(model.config)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.mark.parametrize("as_init", [True, False], ids=["init", "model"])
def test_label_count_mismatch_is_a_one_line_data_error(three_label_dir, tiny_dir, tmp_path, as_init):
    kw = {"init": str(three_label_dir)} if as_init else {"model": str(three_label_dir)}
    with pytest.raises(DataError) as exc:
        finetune(
            config(tiny_dir, strategy="head", epochs=1, decontaminate_against=None, **kw), tmp_path, progress=False
        )
    assert re.search(r"3 labels but task 'rotten_tomatoes' has 2", one_line(exc))
    assert not (tmp_path / "checkpoints").exists()


@pytest.mark.parametrize("split", ["train", "validation", "test"])
def test_empty_split_is_a_one_line_data_error(tiny_dir, tmp_path, monkeypatch, split):
    real = finetune_module.load_any

    def load(name, which, *a, **k):
        ds = real(name, which, *a, **k)
        return (
            TextDataset([], [], ds.name, which, ds.num_labels) if which == split and name == "rotten_tomatoes" else ds
        )

    monkeypatch.setattr(finetune_module, "load_any", load)
    with pytest.raises(DataError) as exc:
        finetune(config(tiny_dir, epochs=1), tmp_path, progress=False)
    assert f"rotten_tomatoes/{split}" in one_line(exc) and ("empty" in str(exc.value) or "0 class" in str(exc.value))
    assert not (tmp_path / "checkpoints").exists()


def test_zero_limit_is_a_one_line_config_error(tiny_dir, tmp_path):
    with pytest.raises(
        ConfigError, match=r"--limit-train must be at least 1, got 0 \(a whole number: examples\)"
    ) as exc:
        finetune(config(tiny_dir, limit_train=0), tmp_path, progress=False)
    one_line(exc)
    assert not any(tmp_path.iterdir())  # refused before the run folder was claimed


def test_tiny_eval_limit_without_decontaminated_examples_still_runs(tiny_dir, tmp_path):
    # The 3-example stratified test subset (seed 42) lies wholly inside SST-2 train: the run goes on without
    # a decontaminated accuracy instead of failing on an empty split.
    m = finetune(config(tiny_dir, epochs=1, limit_train=32, limit_eval=3, strategy="head"), tmp_path, progress=False)
    assert set(m["accuracy"]) == {"validation", "test"} and m["sizes"]["test"] == 3


# ---------------------------------------------------------------------------------------------- --init
def test_saved_model_is_a_valid_init_for_a_second_run(tiny_dir, tmp_path, tokenizer):
    first = tmp_path / "source"
    cfg = config(tiny_dir, epochs=1, save_model=True, decontaminate_against=None)
    m1 = finetune(cfg, first, progress=False)
    saved, _ = load_model(str(first / "model"), num_labels=None)
    original, _ = load_model(str(tiny_dir), num_labels=2)
    # LoRA merged into blocks 0-1 only; the trained head is kept; nothing else moved.
    for i in range(LAYERS):
        query = [get_blocks(m)[i].attention.self.query.weight for m in (saved, original)]
        same = torch.equal(*query)
        assert same == (i not in m1["layers"]), i
    assert not any("lora" in n for n, _ in saved.named_parameters())

    second = tmp_path / "target"
    m2 = finetune(
        config(tiny_dir, epochs=1, strategy="head", init=str(first / "model"), decontaminate_against=None),
        second,
        progress=False,
    )
    assert m2["strategy"] == "head" and m2["config"]["init"] == str(first / "model")
    # The second run started from the saved model: its start features are the saved model's, not the base's.
    cka_set = EncodedSplit(
        load_task("rotten_tomatoes", "validation").stratified(32, 42).stratified(32, 42), tokenizer, 32
    )
    start = load_file(second / "cka_start.safetensors")
    want = cka_features(saved, cka_set)
    assert all(torch.allclose(start[str(i)], want[i], atol=1e-5) for i in range(LAYERS))
    base_start = load_file(first / "cka_start.safetensors")
    assert not torch.allclose(start["1"], base_start["1"], atol=1e-5)


# ---------------------------------------------------------------------------------------------- real MiniLM
@pytest.mark.real
def test_real_minilm_lora_inflection_quick_run(tmp_path):
    cfg = FinetuneConfig(
        model="minilm",
        strategy="lora-inflection",
        layers=[0, 1],
        epochs=1,
        limit_train=64,
        limit_eval=64,
        max_length=32,
        cka_examples=64,
        batch_size=16,
        log_every=2,
    )
    m = finetune(cfg, tmp_path, progress=False)
    h = 384
    assert m["layers"] == [0, 1] and m["trainable_params"] == lora_params(2, h) + head_params(h)
    assert REQUIRED_KEYS <= set(m) and set(m["accuracy"]) == {"validation", "test", "test_decontaminated"}
    assert [r["step"] for r in m["grad_profile"]] == [0, 2]
    for row in m["grad_profile"]:
        assert all(v > 0 for v in row["param_grad_norm"][:2]) and row["param_grad_norm"][2:] == [0.0] * 4
        assert all(math.isfinite(v) and v > 0 for v in row["activation_grad_norm"])
    assert len(m["delta_cka"]) == 6 and all(math.isfinite(v) and v >= -1e-9 for v in m["delta_cka"])
    assert m["delta_cka"][0] > 0  # the adapted block moved
