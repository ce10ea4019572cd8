"""Accumulator totals from stacked per-batch records (issue 19): the same numbers as summing the
records one by one, for every subset a bootstrap draws, and never stale after the records change."""

import pytest
import torch

from inflora.metrics.accumulate import SumAccumulator


class Pair(SumAccumulator):
    fields = ("vec", "count")


def loop_totals(acc, batches):
    chosen = [acc.records[i] for i in batches]
    return {k: sum((r[k] for r in chosen), torch.zeros_like(chosen[0][k])) for k in acc.fields}


def filled(n=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    acc = Pair()
    for _ in range(n):
        acc.add(vec=torch.randn(3, generator=g), count=float(torch.randint(1, 9, (1,), generator=g)))
    return acc


def test_totals_over_resamples_equal_the_record_by_record_sums():
    acc = filled()
    g = torch.Generator().manual_seed(1)
    for _ in range(20):
        idx = torch.randint(0, 6, (6,), generator=g).tolist()  # with repeats, as a bootstrap draws
        got, want = acc.totals(idx), loop_totals(acc, idx)
        for k in acc.fields:
            torch.testing.assert_close(got[k], want[k], rtol=1e-12, atol=1e-12)
    all_ = acc.totals()
    torch.testing.assert_close(all_["vec"], loop_totals(acc, range(6))["vec"], rtol=1e-12, atol=1e-12)


def test_totals_follow_records_that_change_after_a_first_total():
    acc = filled(4)
    before = acc.totals()["count"]
    acc.records.clear()  # what the training recorder does between logged steps
    assert float(acc.totals()["count"].sum()) == 0
    acc.add(vec=torch.ones(3), count=2.0)
    assert float(acc.totals()["count"]) == 2.0 and float(before) != 2.0
    acc.add(vec=torch.ones(3), count=5.0)
    assert float(acc.totals([1])["count"]) == 5.0 and float(acc.totals()["count"]) == 7.0
    assert float(acc.totals([])["count"].sum()) == 0


def test_an_accumulator_given_the_wrong_fields_raises():
    """Values go in by name: a missing field, an unknown one or a positional value is refused,
    never cut off or shifted into the wrong field."""
    acc = Pair()
    for bad in ({"vec": torch.ones(3)}, {"vec": torch.ones(3), "count": 1.0, "extra": 2.0}, {"vek": 1, "count": 1}):
        with pytest.raises(ValueError, match="fields"):
            acc.add(**bad)
    with pytest.raises(TypeError):
        acc.add(torch.ones(3), 1.0)
    assert acc.records == []


def test_the_output_sums_name_every_field_but_nonfinite():
    from inflora.metrics.output import OutputSaturation, output_saturation, saturation_sums

    rows = output_saturation(torch.randn(5, 3), torch.tensor([0, 1, 2, 0, 1]))
    assert set(saturation_sums(rows)) == set(OutputSaturation.fields) - {"nonfinite"}


def test_every_bootstrap_resample_at_once_equals_each_resample_alone(minilm, data_dir):
    """``diagnose``'s bootstrap computes all resamples' profiles in one indexed sum per field
    (``LayerProbe.resampled_profiles``): on the real MiniLM and RT data each resample's entropy and
    gradient profile must be exactly those of ``layer_results`` on that resample's batches."""
    import numpy as np

    from inflora.data import load_task, probe_batches
    from inflora.probe import LayerProbe, probe_step

    model, tok = minilm
    batches = probe_batches(
        load_task("rotten_tomatoes", "validation", str(data_dir)), tok, batches=5, batch_size=4, max_length=32, seed=3
    )
    names = ("attention_entropy", "activation_grad")
    with LayerProbe(model, list(names)) as probe:
        for b in batches:
            probe_step(model, probe, b)
        draws = np.random.default_rng(0).integers(0, 5, (40, 5))
        many = probe.resampled_profiles(draws, names)
        for row, (entropy, grad) in zip(draws.tolist(), many):
            rows = probe.layer_results(row, only=names)
            assert entropy == [r["attention_entropy"] for r in rows]
            assert grad == [r["activation_grad_norm"] for r in rows]
    assert len({tuple(e) for e, _ in many}) > 1  # the resamples differ, so the check is not vacuous
