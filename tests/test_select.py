"""SKI terms and the selection rules on hand-made profiles, the registry, and bootstrap stability."""

import math

import numpy as np
import pytest

from inflora.errors import ConfigError, DataError
from inflora.select import (
    RULES,
    band_from_peaks,
    bootstrap_stability,
    decay_ratios,
    inverse_minmax,
    local_maxima,
    select_layers,
    ski_terms,
)

# entropy dips at layers 0 and 5, gradient likewise: the two SKI peaks of a BERT-like profile
BERT_LIKE_ENTROPY = [1.0, 2.0, 2.5, 2.6, 2.0, 1.2, 2.2, 2.8, 3.0, 3.1, 3.2, 3.3]
BERT_LIKE_GRAD = [v * 1e-4 for v in BERT_LIKE_ENTROPY]


def test_inverse_minmax():
    np.testing.assert_allclose(inverse_minmax([1.0, 3.0, 2.0]), [1.0, 0.0, 0.5])
    np.testing.assert_allclose(inverse_minmax([2.0, 2.0, 2.0]), [0.0, 0.0, 0.0])  # flat: no signal


def test_ski_terms_by_hand():
    t = ski_terms([3.0, 1.0, 2.0, 4.0], [4.0, 3.0, 1.0, 2.0])
    np.testing.assert_allclose(t["entropy_term"], [1 / 3, 1.0, 2 / 3, 0.0])
    np.testing.assert_allclose(t["grad_term"], [0.0, 1 / 3, 1.0, 2 / 3])
    np.testing.assert_allclose(t["ski"], [1 / 6, 2 / 3, 5 / 6, 1 / 3])
    np.testing.assert_allclose(
        ski_terms([3.0, 1.0, 2.0, 4.0], [4.0, 3.0, 1.0, 2.0], alpha=1.0)["ski"], [1 / 3, 1, 2 / 3, 0]
    )
    np.testing.assert_allclose(
        ski_terms([3.0, 1.0, 2.0, 4.0], [4.0, 3.0, 1.0, 2.0], alpha=0.0)["ski"], [0, 1 / 3, 1, 2 / 3]
    )


def test_ski_terms_are_scale_free():
    a = ski_terms(BERT_LIKE_ENTROPY, BERT_LIKE_GRAD)["ski"]
    b = ski_terms([10 * v + 3 for v in BERT_LIKE_ENTROPY], [1e3 * v for v in BERT_LIKE_GRAD])["ski"]
    np.testing.assert_allclose(a, b, atol=1e-12)


def test_local_maxima_with_and_without_boundaries():
    s = [0.9, 0.5, 0.7, 0.2, 0.8]
    assert local_maxima(s) == [0, 2, 4]
    assert local_maxima(s, boundary=False) == [2]
    assert local_maxima([0.1, 0.5, 0.5, 0.1]) == []  # a plateau is not a strict peak
    assert local_maxima([0.3]) == [0]


def test_plateau_peaks_are_opt_in_and_sit_at_the_middle_of_the_run():
    assert local_maxima([0.1, 0.5, 0.5, 0.1], plateaus=True) == [1]
    assert local_maxima([0.1, 0.5, 0.5, 0.5, 0.2, 0.4], plateaus=True) == [2, 5]
    assert local_maxima([0.5, 0.5, 0.1, 0.3, 0.3], plateaus=True) == [0, 3]  # flat tops at both ends
    assert local_maxima([0.5, 0.5, 0.1, 0.3, 0.3], plateaus=True, boundary=False) == []
    assert local_maxima([0.2, 0.2, 0.2], plateaus=True) == []  # a flat profile has no peak
    assert local_maxima([0.1, 0.5, 0.5, 0.7], plateaus=True) == [3]  # a shelf on the way up is no peak
    s = [0.9, 0.5, 0.7, 0.2, 0.8]
    assert local_maxima(s, plateaus=True) == local_maxima(s)  # no ties: the same as strict peaks


def test_ski_rule_with_plateaus_selects_a_band_where_strict_peaks_select_none():
    entropy, grad = [3.0, 2.0, 2.0, 3.0], [3.0, 2.0, 2.0, 3.0]  # SKI = [0, 1, 1, 0]
    assert select_layers("ski", entropy, grad) == []
    assert select_layers("ski", entropy, grad, plateaus=True) == [0, 1, 2]


def test_band_keeps_top_two_peaks_widened_by_one_and_clipped():
    s = [0.9, 0.5, 0.7, 0.2, 0.8]
    assert band_from_peaks(s, [0, 2, 4]) == [0, 1, 3, 4]
    assert band_from_peaks(s, [0, 2, 4], top=1, widen=0) == [0]
    assert band_from_peaks(s, [0, 2, 4], top=3, widen=1) == [0, 1, 2, 3, 4]
    assert band_from_peaks([0.5, 0.1, 0.5, 0.1, 0.5], [0, 2, 4], top=2, widen=0) == [0, 2]  # ties: lower layer first


def test_ski_rule_reproduces_the_bert_base_band():
    assert select_layers("ski", BERT_LIKE_ENTROPY, BERT_LIKE_GRAD) == [0, 1, 4, 5, 6]
    assert select_layers("ski", BERT_LIKE_ENTROPY, BERT_LIKE_GRAD, boundary=False) == [4, 5, 6]
    assert select_layers("ski", BERT_LIKE_ENTROPY, BERT_LIKE_GRAD, top=1) == [0, 1]


def test_ski_rule_on_a_flat_profile_selects_nothing():
    terms = ski_terms([2.0] * 6, [1e-3] * 6)
    assert not terms["ski"].any()
    assert select_layers("ski", [2.0] * 6, [1e-3] * 6) == []


def test_ski_rule_combines_both_terms():
    # entropy alone peaks at layer 1, gradient alone at layer 4: alpha moves the choice between them
    entropy = [3.0, 1.0, 3.0, 3.0, 3.0, 3.0]
    grad = [5.0, 5.0, 5.0, 5.0, 1.0, 5.0]
    assert select_layers("ski", entropy, grad, alpha=1.0, top=1, widen=0) == [1]
    assert select_layers("ski", entropy, grad, alpha=0.0, top=1, widen=0) == [4]
    assert select_layers("ski", entropy, grad, top=2, widen=0) == [1, 4]


def test_decay_variant_scores_the_steepest_drop():
    grad = [0.1, 0.1, 1.0, 1.0, 1.0]  # going down, the gradient collapses between layers 2 and 1
    np.testing.assert_allclose(decay_ratios(grad), [1.0, 0.1, 1.0, 1.0, 1.0])
    t = ski_terms([1.0] * 5, grad, variant="decay")
    np.testing.assert_allclose(t["grad_term"], [0, 1, 0, 0, 0])
    assert select_layers("ski-decay", [1.0] * 5, grad, widen=0) == [1]
    # the level variant would prefer the two low layers instead
    assert select_layers("ski", [1.0] * 5, grad, widen=0, boundary=False) == []
    assert select_layers("ski", [1.0] * 5, grad, widen=0, top=5) == []  # plateau 0-1: no strict peak
    assert np.isfinite(decay_ratios([1.0, 0.0, 1.0])).all()


def test_topk_and_threshold_rules():
    s = ski_terms([3.0, 1.0, 2.0, 4.0], [4.0, 3.0, 1.0, 2.0])["ski"]  # [1/6, 2/3, 5/6, 1/3]
    assert np.allclose(s, [1 / 6, 2 / 3, 5 / 6, 1 / 3])
    assert select_layers("topk", [3.0, 1.0, 2.0, 4.0], [4.0, 3.0, 1.0, 2.0], k=2) == [1, 2]
    assert select_layers("topk", [3.0, 1.0, 2.0, 4.0], [4.0, 3.0, 1.0, 2.0], k=1) == [2]
    assert select_layers("topk", [3.0, 1.0, 2.0, 4.0], [4.0, 3.0, 1.0, 2.0], k=10) == [0, 1, 2, 3]
    assert select_layers("threshold", [3.0, 1.0, 2.0, 4.0], [4.0, 3.0, 1.0, 2.0], tau=0.5) == [1, 2]
    assert select_layers("threshold", [3.0, 1.0, 2.0, 4.0], [4.0, 3.0, 1.0, 2.0], tau=0.8) == [2]
    assert select_layers("threshold", [3.0, 1.0, 2.0, 4.0], [4.0, 3.0, 1.0, 2.0], tau=0.9) == []
    with pytest.raises(ConfigError, match="k >= 1"):
        select_layers("topk", [1.0, 2.0], [1.0, 2.0], k=0)


def _one_line_config_error(fn, *args, match, **kw):
    with pytest.raises(ConfigError, match=match) as info:
        fn(*args, **kw)
    assert "\n" not in str(info.value)
    return str(info.value)


def test_unknown_rule_and_bad_parameters_are_one_line_config_errors():
    msg = _one_line_config_error(select_layers, "nope", [1.0, 2.0], [1.0, 2.0], match="unknown selection rule 'nope'")
    assert all(name in msg for name in ("ski", "ski-decay", "topk", "threshold"))
    _one_line_config_error(select_layers, "ski", [1.0, 2.0], [1.0, 2.0], match="bad parameters", kk=3)
    _one_line_config_error(ski_terms, [1.0, 2.0], [1.0, 2.0], match="alpha", alpha=1.5)
    _one_line_config_error(ski_terms, [1.0, 2.0], [1.0, 2.0], match="variant", variant="steep")


def test_bad_profiles_are_data_errors():
    with pytest.raises(DataError, match="layers \\[1\\]"):
        ski_terms([1.0, math.nan, 2.0], [1.0, 2.0, 3.0])
    with pytest.raises(DataError, match="layers \\[0, 2\\]"):
        ski_terms([1.0, 1.5, 2.0], [math.inf, 2.0, math.nan])
    with pytest.raises(DataError, match="equal-length"):
        ski_terms([1.0, 2.0], [1.0, 2.0, 3.0])
    with pytest.raises(DataError):
        ski_terms([], [])


def test_a_new_rule_is_one_function_and_one_registration():
    @RULES.register("test-lowest-entropy")
    def lowest(entropy, grad, **kw):
        return [int(np.argmin(entropy))]

    try:
        assert "test-lowest-entropy" in RULES.names()
        assert select_layers("test-lowest-entropy", [3.0, 0.5, 2.0], [1.0, 1.0, 1.0]) == [1]
        with pytest.raises(ConfigError, match="registered twice"):
            RULES.register("test-lowest-entropy")(lowest)
    finally:
        RULES._items.pop("test-lowest-entropy", None)


# ---------------------------------------------------------------- bootstrap stability


def _per_batch_profiles(n_batches, base_entropy, base_grad, noise, seed=0):
    rng = np.random.default_rng(seed)
    e = np.asarray(base_entropy)[None] + noise * rng.normal(size=(n_batches, len(base_entropy)))
    g = np.asarray(base_grad)[None] * np.exp(noise * rng.normal(size=(n_batches, len(base_grad))))
    return e, g


def _profile_for(e, g):
    return lambda idx: (e[idx].mean(0).tolist(), g[idx].mean(0).tolist())


def test_stability_is_one_for_a_strongly_peaked_profile():
    entropy = [3.0, 3.0, 3.0, 0.5, 3.0, 3.0, 3.0, 3.0]
    grad = [1.0, 1.0, 1.0, 0.01, 1.0, 1.0, 1.0, 1.0]
    e, g = _per_batch_profiles(8, entropy, grad, noise=0.05)
    stab = bootstrap_stability(_profile_for(e, g), 8, 8, "ski", {"top": 1, "widen": 1}, resamples=100, seed=0)
    assert stab[2] == stab[3] == stab[4] == 1.0
    assert stab[0] == stab[7] == 0.0


def test_stability_in_unit_interval_deterministic_and_sensitive_to_noise():
    e, g = _per_batch_profiles(6, BERT_LIKE_ENTROPY, BERT_LIKE_GRAD, noise=2.0, seed=1)
    pf = _profile_for(e, g)
    a = bootstrap_stability(pf, 6, 12, "ski", {}, resamples=80, seed=3)
    b = bootstrap_stability(pf, 6, 12, "ski", {}, resamples=80, seed=3)
    assert a == b
    assert len(a) == 12 and all(0.0 <= v <= 1.0 for v in a)
    assert any(0.0 < v < 1.0 for v in a)  # noisy batches: some layers are chosen only sometimes
    # every resample picks top-2 peaks widened by one: 2 to 6 layers
    assert 2 <= sum(a) <= 6
    c = bootstrap_stability(pf, 6, 12, "ski", {}, resamples=80, seed=4)
    assert all(0.0 <= v <= 1.0 for v in c)


def test_stability_counts_resamples_exactly():
    # two batches: layer 0 is chosen from batch 0, layer 2 from batch 1
    e = np.array([[0.0, 1.0, 1.0], [1.0, 1.0, 0.0]])
    g = np.ones((2, 3))
    stab = bootstrap_stability(_profile_for(e, g), 2, 3, "topk", {"k": 1}, resamples=400, seed=0)
    # resample {0,0}: layer 0; {1,1}: layer 2; mixed (prob 1/2): flat mean, stable argsort picks 0
    assert stab[1] == 0.0
    assert stab[0] + stab[2] == pytest.approx(1.0)
    assert 0.65 < stab[0] < 0.85 and 0.15 < stab[2] < 0.35


def test_stability_needs_two_batches_and_skips_nonfinite_resamples():
    assert all(math.isnan(v) for v in bootstrap_stability(lambda idx: ([1.0], [1.0]), 1, 3, "ski", {}))
    e, g = _per_batch_profiles(5, BERT_LIKE_ENTROPY, BERT_LIKE_GRAD, noise=0.01)
    e[2, 4] = np.nan  # one bad batch: resamples containing it are skipped, not counted
    stab = bootstrap_stability(_profile_for(e, g), 5, 12, "ski", {}, resamples=60, seed=0)
    assert stab == [1.0, 1.0, 0.0, 0.0, 1.0, 1.0, 1.0, 0.0, 0.0, 0.0, 0.0, 0.0]
