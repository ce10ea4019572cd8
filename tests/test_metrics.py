"""Each metric against a slow loop reference (agreement <= 1e-5), streaming = one-shot, CKA properties."""

import math

import numpy as np
import pytest
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from _reference import (
    activation_grad_reference,
    cka_reference,
    entropy_reference,
    mean_pool_reference,
    param_grad_reference,
    random_attention,
)
from inflora.metrics import (
    ActivationGradNorm,
    AttentionEntropy,
    ParamGradNorm,
    SumAccumulator,
    activation_grad_norm,
    attention_entropy,
    attention_entropy_sums,
    delta_cka,
    linear_cka,
    param_grad_norm,
    pool_hidden,
    shared_pca,
)


TOL = dict(rtol=1e-5, atol=1e-6)


def padded_mask(lengths, t):
    mask = torch.zeros(len(lengths), t, dtype=torch.long)
    for i, n in enumerate(lengths):
        mask[i, :n] = 1
    return mask


# ---------------------------------------------------------------- attention entropy


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("lengths", [[7, 7, 7], [7, 4, 2], [1, 5, 3]])
def test_attention_entropy_matches_loop_reference(causal, lengths):
    mask = padded_mask(lengths, 7)
    attn = random_attention(3, 4, 7, mask, causal=causal, seed=len(lengths) + sum(lengths))
    got = attention_entropy(attn, mask, causal=causal)
    ref = entropy_reference(attn, mask, causal=causal)
    np.testing.assert_allclose(got["head_entropy"].numpy(), ref["head"], **TOL)
    np.testing.assert_allclose(got["head_entropy_norm"].numpy(), ref["head_norm"], **TOL)


def test_entropy_ignores_mass_on_padded_keys_and_padded_queries():
    # A map that was *not* masked (mass on padded keys) still counts only valid keys, and padded
    # query rows (here garbage) never enter the mean.
    mask = padded_mask([5, 3], 5)
    g = torch.Generator().manual_seed(1)
    attn = torch.softmax(torch.randn(2, 2, 5, 5, generator=g), -1)
    attn[1, :, 3:, :] = 0.5  # padded queries of example 1
    got = attention_entropy(attn, mask)
    ref = entropy_reference(attn, mask)
    np.testing.assert_allclose(got["head_entropy"].numpy(), ref["head"], **TOL)
    np.testing.assert_allclose(got["head_entropy_norm"].numpy(), ref["head_norm"], **TOL)


def test_entropy_known_values():
    # uniform attention over n valid keys has entropy log n and normalised entropy 1; one-hot has 0
    mask = padded_mask([4, 2], 4)
    uniform = mask[:, None, None, :].float().expand(2, 1, 4, 4) / mask.sum(1).float()[:, None, None, None]
    got = attention_entropy(uniform, mask)
    assert got["head_entropy"].item() == pytest.approx((4 * math.log(4) + 2 * math.log(2)) / 6, rel=1e-6)
    assert got["head_entropy_norm"].item() == pytest.approx(1.0, rel=1e-6)
    one_hot = torch.zeros(2, 1, 4, 4)
    one_hot[..., 0] = 1.0
    got = attention_entropy(one_hot, mask)
    assert got["head_entropy"].item() == 0.0 and got["head_entropy_norm"].item() == 0.0


def test_causal_first_query_has_no_normalised_form():
    mask = padded_mask([3], 3)
    attn = random_attention(1, 1, 3, mask, causal=True)
    raw, n, norm, nn_ = attention_entropy_sums(attn, mask, causal=True)
    assert n.tolist() == [3.0] and nn_.tolist() == [2.0]  # query 0 sees one key: log(1) = 0


def test_entropy_accumulator_streams_like_one_shot_on_concatenation():
    t, batches = 6, []
    for i, lengths in enumerate([[6, 2], [3, 5, 6], [1]]):
        mask = padded_mask(lengths, t)
        batches.append((random_attention(len(lengths), 3, t, mask, seed=i), mask))
    acc = AttentionEntropy()
    for attn, mask in batches:
        acc.update(attn, mask)
    res = acc.compute()
    attn_all = torch.cat([a for a, _ in batches])
    mask_all = torch.cat([m for _, m in batches])
    ref = entropy_reference(attn_all, mask_all)
    np.testing.assert_allclose(res["head_entropy"], ref["head"], **TOL)
    assert res["attention_entropy"] == pytest.approx(ref["mean"], rel=1e-5)
    assert res["attention_entropy_norm"] == pytest.approx(ref["mean_norm"], rel=1e-5)
    # any multiset of batches (what bootstrap resampling uses) = one shot on that concatenation
    pick = [2, 0, 0]
    ref = entropy_reference(torch.cat([batches[i][0] for i in pick]), torch.cat([batches[i][1] for i in pick]))
    np.testing.assert_allclose(acc.compute(pick)["head_entropy"], ref["head"], **TOL)


def test_entropy_accumulator_empty_is_nan():
    res = AttentionEntropy().compute()
    assert math.isnan(res["attention_entropy"]) and math.isnan(res["attention_entropy_norm"])


# ---------------------------------------------------------------- activation gradients


@pytest.mark.parametrize("lengths", [[5, 5, 5], [5, 2, 1]])
def test_activation_grad_norm_matches_loop_reference(lengths):
    mask = padded_mask(lengths, 5)
    grad = torch.randn(3, 5, 8, generator=torch.Generator().manual_seed(0))
    grad[mask == 0] = 1e3  # padding positions must not count
    got = activation_grad_norm(grad, mask)
    ref = activation_grad_reference(grad, mask)
    assert got["per_token"] == pytest.approx(ref["per_token"], rel=1e-5)
    assert got["frobenius"] == pytest.approx(ref["frobenius"], rel=1e-5)


def test_activation_grad_accumulator_streams():
    g = torch.Generator().manual_seed(3)
    items = [
        (torch.randn(n, 4, 6, generator=g), padded_mask(lens, 4)) for n, lens in [(2, [4, 1]), (3, [2, 3, 4]), (1, [4])]
    ]
    acc = ActivationGradNorm()
    for grad, mask in items:
        acc.update(grad, mask)
    res = acc.compute()
    # per-token mean: the one-shot value on the concatenated batches
    ref = activation_grad_reference(torch.cat([x for x, _ in items]), torch.cat([m for _, m in items]))
    assert res["activation_grad_norm"] == pytest.approx(ref["per_token"], rel=1e-5)
    # Frobenius is defined per batch; the accumulator reports its mean over batches
    frob = [activation_grad_reference(x, m)["frobenius"] for x, m in items]
    assert res["activation_grad_frobenius"] == pytest.approx(sum(frob) / 3, rel=1e-5)
    assert res["activation_grad_nonfinite_batches"] == 0


def test_activation_grad_accumulator_counts_nonfinite_batches_without_poisoning_the_mean():
    g = torch.Generator().manual_seed(4)
    good = [torch.randn(2, 3, 4, generator=g) for _ in range(2)]
    bad = good[0].clone()
    bad[0, 0, 0] = float("inf")
    mask = torch.ones(2, 3, dtype=torch.long)
    acc = ActivationGradNorm()
    for x in (good[0], bad, good[1]):
        acc.update(x, mask)
    res = acc.compute()
    ref = activation_grad_reference(torch.cat(good), torch.cat([mask, mask]))
    assert res["activation_grad_nonfinite_batches"] == 1
    assert res["activation_grad_norm"] == pytest.approx(ref["per_token"], rel=1e-5)
    only_bad = acc.compute([1])
    assert math.isnan(only_bad["activation_grad_norm"]) and only_bad["activation_grad_nonfinite_batches"] == 1


# ---------------------------------------------------------------- parameter gradients


def _module_with_grads():
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(4, 5), torch.nn.Tanh(), torch.nn.Linear(5, 3))
    net(torch.randn(7, 4)).pow(2).sum().backward()
    return net


def test_param_grad_norm_matches_loop_reference():
    net = _module_with_grads()
    assert param_grad_norm(net.parameters()) == pytest.approx(param_grad_reference(net.parameters()), rel=1e-6)
    assert param_grad_norm(net.parameters()) > 0


def test_param_grad_norm_skips_frozen_and_gradless_parameters():
    net = _module_with_grads()
    net[0].weight.requires_grad_(False)  # frozen, although a stale .grad is still attached
    net[2].bias.grad = None
    expected = math.sqrt(sum(float(p.grad.pow(2).sum()) for p in (net[0].bias, net[2].weight)))
    assert param_grad_norm(net.parameters()) == pytest.approx(expected, rel=1e-6)
    assert param_grad_norm(net.parameters()) == pytest.approx(param_grad_reference(net.parameters()), rel=1e-6)
    for p in net.parameters():
        p.requires_grad_(False)
    assert param_grad_norm(net.parameters()) == 0.0


def test_param_grad_accumulator_is_mean_over_batches_and_flags_nonfinite():
    net = _module_with_grads()
    base = [p.grad.clone() for p in net.parameters()]
    acc = ParamGradNorm()
    values = []
    for scale in (1.0, 2.0, float("nan"), 3.0):
        for p, g in zip(net.parameters(), base):
            p.grad = g * scale
        acc.update(net.parameters())
        if math.isfinite(scale):
            values.append(param_grad_reference(net.parameters()))
    res = acc.compute()
    assert res["param_grad_norm"] == pytest.approx(sum(values) / len(values), rel=1e-6)
    assert res["param_grad_nonfinite_batches"] == 1


def test_sum_accumulator_gather_is_a_noop_without_distributed():
    acc = ParamGradNorm()
    acc.add(norm_sum=1.0, batches=1.0, nonfinite=0.0)
    acc.gather()
    assert len(acc) == 1 and isinstance(acc, SumAccumulator)


# ---------------------------------------------------------------- pooling and CKA


def test_mean_and_cls_pooling():
    hidden = torch.randn(3, 5, 4, generator=torch.Generator().manual_seed(0))
    mask = padded_mask([5, 2, 1], 5)
    torch.testing.assert_close(
        pool_hidden(hidden, mask).double(), mean_pool_reference(hidden, mask), rtol=1e-6, atol=1e-6
    )
    torch.testing.assert_close(pool_hidden(hidden, mask, "cls"), hidden[:, 0])


@pytest.mark.parametrize("n,d1,d2", [(10, 4, 4), (12, 3, 7), (6, 20, 2)])
def test_linear_cka_matches_gram_reference(n, d1, d2):
    g = torch.Generator().manual_seed(n + d1)
    x = torch.randn(n, d1, generator=g, dtype=torch.float64)
    y = x[:, :1].repeat(1, d2) * 0.5 + torch.randn(n, d2, generator=g, dtype=torch.float64)
    assert linear_cka(x, y) == pytest.approx(cka_reference(x.numpy(), y.numpy()), rel=1e-6, abs=1e-9)


def test_linear_cka_degenerate_and_mismatched_inputs():
    assert math.isnan(linear_cka(torch.ones(4, 3), torch.randn(4, 3)))  # constant features: CKA undefined
    with pytest.raises(ValueError, match="same examples"):
        linear_cka(torch.randn(4, 3), torch.randn(5, 3))


_features = st.integers(4, 12).flatmap(
    lambda n: st.tuples(
        arrays(np.float64, (n, 3), elements=st.floats(-10, 10, allow_nan=False, width=32)),
        arrays(np.float64, (n, 4), elements=st.floats(-10, 10, allow_nan=False, width=32)),
    )
)


def _nondegenerate(a):
    c = a - a.mean(0)
    return np.linalg.norm(c) > 1e-2 and np.linalg.norm(c.T @ c) > 1e-3


@settings(max_examples=60, deadline=None)
@given(_features, st.integers(0, 2**31 - 1), st.floats(0.01, 100))
def test_linear_cka_invariant_to_orthogonal_transform_and_isotropic_scaling(xy, seed, scale):
    x, y = xy
    assume(_nondegenerate(x) and _nondegenerate(y))
    rng = np.random.default_rng(seed)
    q1, _ = np.linalg.qr(rng.normal(size=(3, 3)))
    q2, _ = np.linalg.qr(rng.normal(size=(4, 4)))
    base = linear_cka(torch.from_numpy(x), torch.from_numpy(y))
    moved = linear_cka(torch.from_numpy(x @ q1 * scale), torch.from_numpy(y @ q2))
    assert moved == pytest.approx(base, rel=1e-6, abs=1e-9)
    assert -1e-9 <= base <= 1 + 1e-9
    assert base == pytest.approx(linear_cka(torch.from_numpy(y), torch.from_numpy(x)), rel=1e-9, abs=1e-12)
    assert base == pytest.approx(cka_reference(x, y), rel=1e-6, abs=1e-9)


@settings(max_examples=40, deadline=None)
@given(_features)
def test_linear_cka_is_one_for_identical_inputs(xy):
    x, _ = xy
    assume(_nondegenerate(x))
    t = torch.from_numpy(x)
    assert linear_cka(t, t) == pytest.approx(1.0, abs=1e-9)
    assert linear_cka(t, t + 5.0) == pytest.approx(1.0, abs=1e-9)  # centring removes a shift


def test_shared_pca_shape_and_basis():
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(10, 6, generator=g), torch.randn(10, 6, generator=g)
    px, py = shared_pca(x, y, k=4)
    assert px.shape == py.shape == (10, 4)
    assert shared_pca(x, y, k=64)[0].shape == (10, 6)  # k clipped to min(n-1, d)
    # the projections of the stacked, centred data are uncorrelated principal components
    both = torch.cat([px, py])
    cov = both.T @ both
    off = cov - torch.diag(torch.diag(cov))
    assert off.abs().max() < 1e-8 * cov.abs().max()


def test_delta_cka_zero_for_identical_and_positive_for_changed():
    g = torch.Generator().manual_seed(0)
    before = torch.randn(40, 16, generator=g)
    assert delta_cka(before, before.clone()) == pytest.approx(0.0, abs=1e-9)
    rotated = before @ torch.linalg.qr(torch.randn(16, 16, generator=g))[0]
    assert delta_cka(before, rotated, k=64) == pytest.approx(0.0, abs=1e-9)  # full basis: rotation is no change
    changed = before + 2.0 * torch.randn(40, 16, generator=g)
    unrelated = torch.randn(40, 16, generator=g)
    d_small, d_big = delta_cka(before, changed), delta_cka(before, unrelated)
    assert 0.0 < d_small < d_big <= 1.0
