"""Output saturation (metrics/output.py): the functional form against slow NumPy loops and autograd,
ECE on hand-built cases, accumulation over batches, bad input, the diagnosis section and its report
on the real MiniLM (the two-rank equality is in test_distributed.py)."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import transformers

from inflora.diagnosis import diagnose
from inflora.errors import DataError
from inflora.metrics import DIAGNOSTICS, OutputSaturation, expected_calibration_error, output_saturation
from inflora.metrics.output import output_rows
from inflora.models import tiny_model

transformers.logging.set_verbosity_error()


def slow_reference(logits: np.ndarray, labels: np.ndarray) -> list[dict]:
    """Row by row in float64 Python loops: max p, p(y), ‖p − y‖₂, argmax (first on ties) == y."""
    rows = []
    for z, y in zip(logits, labels):
        if y == -100:
            continue
        top = max(z)
        e = [math.exp(v - top) for v in z]
        p = [v / sum(e) for v in e]
        pred = next(c for c, v in enumerate(z) if v == top)
        grad = math.sqrt(sum((p[c] - (1.0 if c == y else 0.0)) ** 2 for c in range(len(p))))
        rows.append({"confidence": max(p), "p_true": p[y], "grad_norm": grad, "correct": pred == y})
    return rows


def random_logits(n=64, classes=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(n, classes, generator=g, dtype=torch.float64) * 3
    z[::5] = torch.round(z[::5])  # many exact ties, in the max too
    z[1::5, 1:] = z[1::5, :1]  # all classes tied
    z[2::7] = 0.0
    z[3::5] = -60.0
    z[3::5, -1] = 60.0  # one-hot (saturated) outputs
    y = torch.randint(0, classes, (n,), generator=g)
    y[3::10] = classes - 1  # saturated and right (the others at 3::5 are saturated and wrong or right by chance)
    y[4::9] = -100
    return z, y


@pytest.mark.parametrize("classes", [2, 5])
def test_functional_form_matches_slow_numpy_loops(classes):
    z, y = random_logits(classes=classes)
    rows = output_saturation(z, y)
    ref = slow_reference(z.numpy(), y.numpy())
    assert len(rows["confidence"]) == len(ref) == int((y != -100).sum())
    for key in ("confidence", "p_true", "grad_norm"):
        np.testing.assert_allclose(rows[key].numpy(), [r[key] for r in ref], rtol=1e-10, atol=1e-12)
    assert rows["correct"].tolist() == [r["correct"] for r in ref]
    saturated = rows["grad_norm"][rows["p_true"] > 1 - 1e-12]
    assert len(saturated) and float(saturated.max()) < 1e-12  # a right one-hot output sends back nothing


def test_causal_lm_rows_are_the_shifted_valid_positions():
    g = torch.Generator().manual_seed(3)
    z = torch.randn(2, 6, 11, generator=g, dtype=torch.float64)
    y = torch.randint(0, 11, (2, 6), generator=g)
    y[:, :3] = -100  # the prompt
    y[1, 5] = -100  # padding
    rows = output_saturation(z, y, shift=True)
    ref = slow_reference(z[:, :-1].reshape(-1, 11).numpy(), y[:, 1:].reshape(-1).numpy())
    np.testing.assert_allclose(rows["grad_norm"].numpy(), [r["grad_norm"] for r in ref], rtol=1e-10)
    assert rows["example"].tolist() == [0, 0, 0, 1, 1]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_rows_read_in_chunks_equal_the_rows_read_at_once(dtype):
    """The probe reads a causal LM's logits a few rows at a time (no fp32 copy of [B·T, V]): every
    value must be bit-for-bit that of the whole-tensor computation (the copy ``output_rows`` makes)."""
    g = torch.Generator().manual_seed(11)
    z = (torch.randn(3, 9, 37, generator=g) * 4).to(dtype)
    y = torch.randint(0, 37, (3, 9), generator=g)
    y[0, :4], y[2, 7:] = -100, -100  # a prompt and padding
    whole, labels, _ = output_rows(z, y, shift=True)
    p = whole.softmax(-1)
    for step in (1, 4, 1000):
        rows = output_saturation(z, y, shift=True, chunk_rows=step)
        assert torch.equal(rows["confidence"], p.max(-1).values)
        assert torch.equal(rows["p_true"], p.gather(1, labels[:, None])[:, 0])
        assert torch.equal(rows["correct"], whole.argmax(-1) == labels)
        assert torch.equal(rows["grad_norm"], output_saturation(z, y, shift=True, chunk_rows=len(labels))["grad_norm"])
        assert rows["example"].tolist() == [0] * 5 + [1] * 8 + [2] * 6  # labels 1 … 8 of each row


def test_grad_norm_is_the_norm_of_each_examples_cross_entropy_gradient():
    z, y = random_logits(classes=7, seed=5)
    keep = y != -100
    logits = z.clone().requires_grad_(True)
    F.cross_entropy(logits, y, reduction="sum").backward()  # row i's gradient is that of example i's CE only
    autograd = logits.grad[keep].norm(dim=-1)
    torch.testing.assert_close(output_saturation(z, y)["grad_norm"], autograd, rtol=1e-10, atol=1e-12)


def test_single_binary_logit_uses_the_sigmoid_gradient():
    z = torch.tensor([[2.0], [-1.0], [0.5]], dtype=torch.float64)
    y = torch.tensor([1, 1, 0])
    logits = z.clone().requires_grad_(True)
    F.binary_cross_entropy_with_logits(logits[:, 0], y.double(), reduction="sum").backward()
    rows = output_saturation(z, y)
    torch.testing.assert_close(rows["grad_norm"], logits.grad[:, 0].abs())
    assert rows["correct"].tolist() == [True, False, False]


def _stats(conf, correct) -> dict:
    """Two-class logits with the given max probability; the label makes each row right or wrong."""
    conf = torch.tensor(conf, dtype=torch.float64)
    margin = torch.log(conf / (1 - conf)).nan_to_num(posinf=80.0)
    z = torch.stack([margin, torch.zeros_like(margin)], 1)
    y = torch.tensor([0 if c else 1 for c in correct])
    acc = OutputSaturation()
    acc.update(z, y)
    return acc.compute()


def test_ece_on_hand_built_cases():
    # perfectly calibrated: in each bin the accuracy equals the confidence
    calibrated = _stats([0.75] * 4 + [0.55] * 20, [True, True, True, False] + [True] * 11 + [False] * 9)
    assert calibrated["ece"] == pytest.approx(0.0, abs=1e-12)
    # always confident (p = 1 - 1e-9), half wrong: ECE = |0.5 - 1| up to the bin's mean confidence
    confident = _stats([1 - 1e-9] * 10, [True, False] * 5)
    assert confident["ece"] == pytest.approx(0.5, abs=1e-6)
    assert confident["share_confidence_over_0.99"] == 1.0 and confident["wrong_confident_share"] == 1.0
    assert confident["histogram"]["count"] == [0] * 9 + [10]
    # wrong and confident rows carry all of the logit gradient: right ones send back ~0
    assert confident["confident_wrong_grad_share"] == pytest.approx(1.0, abs=1e-6)
    assert confident["grad_norm_wrong"] == pytest.approx(math.sqrt(2), abs=1e-6)
    # the direct formula on bin sums: two bins, |0.5 - 0.6|·2/4 + |1 - 0.8|·2/4
    assert expected_calibration_error([2, 2], [1.2, 1.6], [1, 2]) == pytest.approx(0.15)


def test_accumulating_batches_equals_one_pass():
    z, y = random_logits(n=100, classes=4, seed=9)
    whole, parts = OutputSaturation(), OutputSaturation()
    whole.update(z, y)
    for start in range(0, 100, 13):
        parts.update(z[start : start + 13], y[start : start + 13])
    a, b = whole.compute(), parts.compute()
    assert len(parts) == 8 and a["predictions"] == b["predictions"] == int((y != -100).sum())
    for key, value in a.items():
        if isinstance(value, float):
            assert b[key] == pytest.approx(value, rel=1e-12, abs=1e-15, nan_ok=True), key
    assert a["histogram"]["count"] == b["histogram"]["count"]
    for key in ("accuracy", "mean_confidence"):
        np.testing.assert_allclose(a["histogram"][key], b["histogram"][key], rtol=1e-12)
    ref = slow_reference(z.numpy(), y.numpy())
    assert a["accuracy"] == pytest.approx(np.mean([r["correct"] for r in ref]))
    assert a["mean_grad_norm"] == pytest.approx(np.mean([r["grad_norm"] for r in ref]), rel=1e-12)
    wrong = [r for r in ref if not r["correct"]]
    assert a["grad_norm_wrong"] == pytest.approx(np.mean([r["grad_norm"] for r in wrong]), rel=1e-12)
    bins = [min(int(r["confidence"] * 10), 9) for r in ref]
    ece = sum(
        abs(
            np.mean([r["correct"] for r, k in zip(ref, bins) if k == b])
            - np.mean([r["confidence"] for r, k in zip(ref, bins) if k == b])
        )
        * bins.count(b)
        for b in set(bins)
    ) / len(ref)
    assert a["ece"] == pytest.approx(ece, rel=1e-10)


def test_nan_logits_are_counted_not_averaged():
    z, y = random_logits(n=20, classes=3)
    acc = OutputSaturation()
    acc.update(z, y)
    bad = z.clone()
    bad[0, 0] = float("nan")
    acc.update(bad, y)
    out = acc.compute()
    assert out["nonfinite_batches"] == 1 and out["predictions"] == int((y != -100).sum())
    assert math.isfinite(out["ece"])


# ---------------------------------------------------------------- bad input through the probe


def batches_with(labels: torch.Tensor, n=2):
    g = torch.Generator().manual_seed(0)
    return [
        {
            "input_ids": torch.randint(5, 1000, (len(labels), 8), generator=g),
            "attention_mask": torch.ones(len(labels), 8, dtype=torch.long),
            "labels": labels.clone(),
        }
        for _ in range(n)
    ]


@pytest.mark.parametrize(
    "labels, message",
    [
        (torch.tensor([0, 1, 5, 1]), r"label ids \[5\] are outside the model's 2 classes"),
        (torch.tensor([0, -3, 1, 1]), r"label ids \[-3\] are outside"),
        (torch.tensor([-100] * 4), "every label is -100"),
    ],
)
def test_bad_labels_are_one_line_errors_before_the_loss_sees_them(labels, message):
    model = tiny_model("bert", layers=2)
    with pytest.raises(DataError, match=message) as info:
        diagnose(model, batches_with(labels), resamples=5, progress=False)
    assert "\n" not in str(info.value)


def test_nan_logits_are_flagged_in_the_diagnosis(tmp_path):
    model = tiny_model("bert", layers=2)
    with torch.no_grad():
        model.classifier.bias[0] = float("nan")
    d = diagnose(model, batches_with(torch.tensor([0, 1, 0, 1])), resamples=5, progress=False)
    assert any("output: 2 batch(es) with non-finite logits" in f for f in d.flags)
    assert d.output["nonfinite_batches"] == 2 and d.output["predictions"] == 0
    d.to_json(tmp_path / "d.json")  # NaN means are written as null


def test_registered_and_a_causal_lm_gets_per_token_numbers():
    assert "output" in DIAGNOSTICS
    model = tiny_model("gpt2", layers=2, task="causal-lm")
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(5, model.config.vocab_size, (3, 10), generator=g)
    labels = ids.clone()
    labels[:, :4] = -100  # prompt tokens are not completion tokens
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels}
    d = diagnose(model, [batch, batch], resamples=5, progress=False)
    assert d.output["unit"] == "next-token position" and d.output["predictions"] == 2 * 3 * 6
    assert all(math.isnan(r["activation_grad_norm_wrong"]) for r in d.layers)  # no per-example split for a causal LM


def test_float_labels_have_no_output_section():
    model = tiny_model("bert", layers=2)
    model.config.problem_type = "multi_label_classification"
    batches = batches_with(torch.tensor([0, 1, 0, 1]))
    for b in batches:
        b["labels"] = torch.nn.functional.one_hot(b["labels"], 2).float()
    d = diagnose(model, batches, resamples=5, progress=False)
    assert d.output == {} and d.layers[0]["activation_grad_norm"] > 0


# ---------------------------------------------------------------- the real MiniLM on RT validation


@pytest.fixture(scope="module")
def real(minilm, data_dir):
    model, tok = minilm
    return diagnose(
        model,
        "rotten_tomatoes",
        tok,
        batches=2,
        batch_size=16,
        max_length=32,
        resamples=10,
        data_dir=str(data_dir),
        progress=False,
    )


@pytest.mark.real
def test_real_minilm_output_section_is_present_and_finite(real, tmp_path):
    import json

    o = real.output
    assert o["unit"] == "example" and o["predictions"] == 32 and o["nonfinite_batches"] == 0
    for key, value in o.items():
        if isinstance(value, float) and key not in ("grad_norm_wrong", "grad_norm_correct", "wrong_confident_share"):
            assert math.isfinite(value), key
    assert sum(o["histogram"]["count"]) == 32 and 0 <= o["ece"] <= 1
    assert 0 < o["mean_grad_norm"] <= math.sqrt(2)
    for row in real.layers:  # the wrong/right split averages back to the layer's ‖∂L/∂h‖
        w = row["wrong_token_share"]
        parts = [
            v for v in (row["activation_grad_norm_wrong"], row["activation_grad_norm_correct"]) if math.isfinite(v)
        ]
        if len(parts) == 2:
            mix = w * row["activation_grad_norm_wrong"] + (1 - w) * row["activation_grad_norm_correct"]
            assert mix == pytest.approx(row["activation_grad_norm"], rel=1e-6)
    real.to_json(tmp_path / "diagnosis.json")
    assert json.loads((tmp_path / "diagnosis.json").read_text())["output"]["predictions"] == 32


@pytest.mark.real
def test_report_has_a_reliability_diagram_with_one_bar_per_non_empty_bin(real, tmp_path):
    from matplotlib.patches import Rectangle

    from inflora.reports import write_diagnosis_report
    from inflora.reports.plots import reliability_figure

    paths = write_diagnosis_report(real, tmp_path)
    assert (tmp_path / "reliability.png").stat().st_size > 0 and "reliability.png" in paths
    md = (tmp_path / "report.md").read_text()
    assert "## Output saturation" in md and "of the logit gradient" in md and "![" in md
    assert "| layer | ‖∂L/∂h‖ | wrong | right | wrong / right |" in md
    fig = reliability_figure(real.output)
    bars = [p for p in fig.axes[0].patches if isinstance(p, Rectangle)]
    filled = [c for c in real.output["histogram"]["count"] if c > 0]
    assert len(bars) == len(filled) >= 1
    labels = sorted(t.get_text() for t in fig.axes[0].texts)
    assert labels == sorted(f"n={c}" for c in filled)
