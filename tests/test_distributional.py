"""Level 2 maths without a model: losses vs brute force, stability, gradients, regularisers,
the ordinal head, functionals on hand-made distributions, unimodality."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from distalign import functionals as fn
from distalign.losses import (
    batch_entropy_bonus,
    distributional_preference_loss,
    distributional_rm_loss,
    entropy,
    entropy_bonus,
    log_prob_greater,
    log_prob_tie,
    ratings_to_bins,
    smoothness_penalty,
)
from distalign.metrics import distribution_summary, is_unimodal
from distalign.models.heads import head_log_probs, log_sigmoid_diff, ordinal_log_probs


@pytest.fixture(autouse=True)
def _float64():
    """These maths tests run in float64; the default is restored for the rest of the suite."""
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(old)


def brute_force(p_w, p_l):
    """Σ_{i>j} p_w(i) p_l(j) and Σ_i p_w(i) p_l(i), by the O(n²) double sum."""
    n = p_w.shape[-1]
    greater = sum(p_w[:, i] * p_l[:, j] for i, j in itertools.product(range(n), range(n)) if i > j)
    tie = sum(p_w[:, i] * p_l[:, i] for i in range(n))
    return greater, tie


@pytest.mark.parametrize("n", [2, 5, 10])
def test_losses_equal_the_double_sum(n):
    torch.manual_seed(n)
    z_w, z_l = torch.randn(64, n) * 3, torch.randn(64, n) * 3
    lw, ll = torch.log_softmax(z_w, -1), torch.log_softmax(z_l, -1)
    greater, tie = brute_force(lw.exp(), ll.exp())
    torch.testing.assert_close(log_prob_greater(lw, ll).exp(), greater, atol=1e-6, rtol=0)
    torch.testing.assert_close(log_prob_tie(lw, ll).exp(), tie, atol=1e-6, rtol=0)
    strict = distributional_preference_loss(lw, ll, "strict")
    half = distributional_preference_loss(lw, ll, "half")
    torch.testing.assert_close(strict, -torch.log(greater), atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(half, -torch.log(greater + 0.5 * tie), atol=1e-6, rtol=1e-6)
    # the three outcomes add up to one
    less = log_prob_greater(ll, lw).exp()
    torch.testing.assert_close(greater + tie + less, torch.ones(64), atol=1e-9, rtol=0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("ties", ["strict", "half"])
def test_finite_for_logits_up_to_50_including_one_bin_mass(dtype, ties):
    n = 10
    one_hot = torch.full((n,), -50.0, dtype=dtype)
    one_hot[3] = 50.0
    cases = [
        (one_hot, one_hot),  # both on the same bin: strict P(>) ~ e^-100, log finite
        (one_hot, one_hot.roll(4)),  # chosen far below rejected
        (one_hot.roll(4), one_hot),
        (torch.linspace(-50, 50, n, dtype=dtype), torch.linspace(50, -50, n, dtype=dtype)),
    ]
    for z_w, z_l in cases:
        z_w = z_w.clone()[None].requires_grad_(True)
        z_l = z_l.clone()[None].requires_grad_(True)
        loss = distributional_preference_loss(
            torch.log_softmax(z_w, -1), torch.log_softmax(z_l, -1), ties
        )
        loss.sum().backward()
        assert torch.isfinite(loss).all(), (z_w, z_l)
        assert torch.isfinite(z_w.grad).all() and torch.isfinite(z_l.grad).all()
    # the log-space form is right where the naive one (log of a sum of raw products) is not
    z = one_hot.to(torch.float32)[None]
    truth = log_prob_greater(torch.log_softmax(z.double(), -1), torch.log_softmax(z.double(), -1))
    ours = log_prob_greater(torch.log_softmax(z, -1), torch.log_softmax(z, -1))
    p = torch.softmax(z, -1)
    naive = torch.log(brute_force(p, p)[0])  # subnormal products: -97.8 instead of -100
    assert abs(ours.item() - truth.item()) < 1e-3 < abs(naive.item() - truth.item())


@pytest.mark.parametrize("ties", ["strict", "half"])
def test_gradient_matches_finite_differences(ties):
    torch.manual_seed(0)
    z_w = torch.randn(3, 6, requires_grad=True)
    z_l = torch.randn(3, 6, requires_grad=True)

    def f(a, b):
        logp_w, logp_l = torch.log_softmax(a, -1), torch.log_softmax(b, -1)
        weights = {"entropy_weight": 0.1, "batch_entropy_weight": 0.1, "smoothness_weight": 0.1}
        return distributional_rm_loss(logp_w, logp_l, ties, **weights)[0]

    assert torch.autograd.gradcheck(f, (z_w, z_l), eps=1e-6, atol=1e-5)


def test_ordinal_head_gradcheck_and_normalisation():
    torch.manual_seed(0)
    params = torch.randn(5, 2, requires_grad=True)
    assert torch.autograd.gradcheck(
        lambda x: ordinal_log_probs(x, 10), (params,), eps=1e-6, atol=1e-5
    )
    logp = ordinal_log_probs(
        torch.tensor([[0.0, 0.0], [30.0, -3.0], [-30.0, 5.0], [0.0, -40.0]]), 10
    )
    torch.testing.assert_close(logp.exp().sum(-1), torch.ones(4), atol=1e-9, rtol=0)
    assert torch.isfinite(logp).all()
    assert is_unimodal(logp.exp()).all()


@settings(max_examples=200, deadline=None)
@given(st.floats(-20, 20), st.floats(-10, 10), st.integers(2, 20))
def test_ordinal_head_is_always_unimodal(mu, s, n):
    logp = ordinal_log_probs(torch.tensor([[mu, s]]), n)
    p = logp.exp()
    assert abs(p.sum().item() - 1) < 1e-9
    assert is_unimodal(p, tol=1e-12).all()


def test_log_sigmoid_diff_tails():
    a = torch.tensor([-math.inf, 30.0, -40.0, 1.0])
    b = torch.tensor([0.0, 31.0, -39.0, math.inf])
    expected = torch.log(torch.sigmoid(b.clamp(max=1e3)) - torch.sigmoid(a.clamp(min=-1e3)))
    got = log_sigmoid_diff(a, b)
    # 30..31: σ(31) − σ(30) = e^-30 − e^-31 in the tail, far below fp64 1 − 1 resolution
    assert got[1].item() == pytest.approx(math.log(math.exp(-30) - math.exp(-31)), rel=1e-9)
    assert got[2].item() == pytest.approx(math.log(math.exp(-39) - math.exp(-40)), rel=1e-9)
    torch.testing.assert_close(got[[0, 3]], expected[[0, 3]])


def _train_entropy(weight: float, kind: str) -> float:
    torch.manual_seed(0)
    z_w = torch.randn(32, 10, requires_grad=True)
    z_l = torch.randn(32, 10, requires_grad=True)
    opt = torch.optim.Adam([z_w, z_l], lr=0.05)
    for _ in range(200):
        logp_w, logp_l = torch.log_softmax(z_w, -1), torch.log_softmax(z_l, -1)
        kw = {"entropy_weight": weight} if kind == "entropy" else {"batch_entropy_weight": weight}
        loss, _ = distributional_rm_loss(logp_w, logp_l, **kw)
        opt.zero_grad()
        loss.backward()
        opt.step()
    logp = torch.log_softmax(torch.cat([z_w, z_l]).detach(), -1)
    if kind == "entropy":
        return entropy(logp).mean().item()
    return -batch_entropy_bonus(logp[:32], logp[32:]).item()


def test_larger_entropy_weight_gives_higher_entropy():
    values = [_train_entropy(w, "entropy") for w in (0.0, 0.05, 0.3)]
    assert values[0] < values[1] < values[2], values
    # the sign of the bonus: adding it lowers the loss when entropy is higher
    flat, peaked = torch.zeros(1, 10), torch.tensor([[5.0] + [0.0] * 9])
    lf, lp = torch.log_softmax(flat, -1), torch.log_softmax(peaked, -1)
    assert entropy_bonus(lf, lf) < entropy_bonus(lp, lp)


def test_dpl_bonus_spreads_the_batch_mean():
    values = [_train_entropy(w, "batch") for w in (0.0, 0.5)]
    assert values[0] < values[1], values


def test_smoothness_penalty_prefers_smooth_rows():
    smooth = torch.log(torch.tensor([[0.05, 0.1, 0.2, 0.3, 0.2, 0.1, 0.05]]))
    jagged = torch.log(torch.tensor([[0.3, 0.0001, 0.3, 0.0001, 0.3, 0.0001, 0.0997]]))
    assert smoothness_penalty(smooth) < smoothness_penalty(jagged)


def test_ratings_to_bins():
    assert ratings_to_bins(torch.tensor([0.0, 2.0, 4.0, 5.0]), 0, 4, 10).tolist() == [0, 4, 9, 9]


# --- functionals on hand-made distributions --------------------------------------------------

POINT = torch.tensor([[0, 0, 1.0, 0, 0]], dtype=torch.float64)  # all mass on score 3
MIX = torch.tensor([[0.5, 0, 0, 0, 0.5]], dtype=torch.float64)  # half on 1, half on 5
UNIFORM = torch.full((1, 5), 0.2, dtype=torch.float64)


def test_expectation_and_std():
    assert fn.expectation(POINT).item() == 3 and fn.std(POINT).item() == 0
    assert fn.expectation(MIX).item() == 3 and fn.std(MIX).item() == pytest.approx(2.0)
    assert fn.expectation(UNIFORM).item() == pytest.approx(3.0)
    assert fn.std(UNIFORM).item() == pytest.approx(math.sqrt(2.0))
    assert fn.mean_minus_std(MIX, kappa=0.5).item() == pytest.approx(2.0)


def test_cvar():
    assert fn.cvar(POINT, 0.25).item() == pytest.approx(3.0)
    assert fn.cvar(MIX, 0.5).item() == pytest.approx(1.0)
    assert fn.cvar(MIX, 1.0).item() == pytest.approx(3.0)
    assert fn.cvar(UNIFORM, 0.3).item() == pytest.approx((0.2 * 1 + 0.1 * 2) / 0.3)


@settings(max_examples=100, deadline=None)
@given(st.lists(st.floats(-8, 8), min_size=2, max_size=12), st.floats(0.01, 1.0))
def test_cvar_never_exceeds_the_mean(logits, alpha):
    p = torch.softmax(torch.tensor([logits]), -1)
    assert fn.cvar(p, alpha).item() <= fn.expectation(p).item() + 1e-9


def test_quantile():
    assert fn.quantile(POINT, 0.1).item() == 3
    assert fn.quantile(MIX, 0.5).item() == 1 and fn.quantile(MIX, 0.51).item() == 5
    assert fn.quantile(UNIFORM, 0.5).item() == 3


def test_win_probability():
    for p in (POINT, MIX, UNIFORM, torch.softmax(torch.randn(4, 7), -1)):
        torch.testing.assert_close(fn.win_probability(p, p), torch.full((p.shape[0],), 0.5))
    assert fn.win_probability(POINT, MIX).item() == pytest.approx(0.5)
    assert fn.win_probability(torch.tensor([[0, 0, 0, 0, 1.0]]), POINT).item() == 1.0


@pytest.mark.parametrize("n", [2, 5, 10])
def test_win_probability_ties_half_or_strict_equal_the_double_sum(n):
    torch.manual_seed(n)
    p, p_ref = torch.softmax(torch.randn(16, n) * 2, -1), torch.softmax(torch.randn(16, n), -1)
    greater, tie = brute_force(p, p_ref)
    torch.testing.assert_close(fn.win_probability(p, p_ref), greater + 0.5 * tie)
    torch.testing.assert_close(fn.win_probability(p, p_ref, ties="strict"), greater)
    # half: the two sides' win probabilities add to one; strict: the ties are nobody's
    half_sum = fn.win_probability(p, p_ref) + fn.win_probability(p_ref, p)
    torch.testing.assert_close(half_sum, torch.ones(16))
    strict_sum = fn.win_probability(p, p_ref, "strict") + fn.win_probability(p_ref, p, "strict")
    torch.testing.assert_close(strict_sum, 1 - tie)


def test_win_probability_strict_by_hand():
    assert fn.win_probability(POINT, POINT, ties="strict").item() == 0.0  # a tie is no win
    assert fn.win_probability(POINT, POINT).item() == 0.5  # a tie is half a win
    assert fn.win_probability(POINT, MIX, ties="strict").item() == pytest.approx(0.5)
    assert fn.win_probability(UNIFORM, POINT, ties="strict").item() == pytest.approx(0.4)
    with pytest.raises(ValueError, match="ties"):
        fn.win_probability(POINT, MIX, ties="third")


def test_strict_win_probability_is_selectable_by_name():
    assert "win_probability_strict" in fn.FUNCTIONALS
    assert set(fn.REFERENCE_FUNCTIONALS) <= set(fn.FUNCTIONALS)
    strict = fn.apply_functional("win_probability_strict", UNIFORM, p_ref=POINT)
    assert strict.item() == pytest.approx(0.4)
    half = fn.apply_functional("win_probability", UNIFORM, p_ref=POINT)
    assert half.item() == pytest.approx(0.5)
    with pytest.raises(ValueError, match=r"win_probability_strict needs .*p_ref"):
        fn.apply_functional("win_probability_strict", MIX)


def test_apply_functional_by_name():
    assert fn.apply_functional("cvar", MIX, alpha=0.5).item() == pytest.approx(1.0)
    with pytest.raises(ValueError, match="p_ref"):
        fn.apply_functional("win_probability", MIX)
    with pytest.raises(ValueError, match="unknown functional"):
        fn.apply_functional("median", MIX)


def test_unimodal_and_summary():
    p = torch.tensor(
        [[0.1, 0.2, 0.4, 0.2, 0.1], [0.3, 0.1, 0.2, 0.1, 0.3], [0.2, 0.2, 0.2, 0.2, 0.2]]
    )
    assert is_unimodal(p).tolist() == [True, False, True]
    logp = torch.log(p)
    out = distribution_summary(logp[:1], logp[1:2])
    assert set(out) >= {"accuracy", "accuracy_expectation", "entropy", "unimodal_share", "std_mean"}
    assert out["unimodal_share"] == 0.5
    # the labels' negative log-likelihood, by brute force over the two scores, ties as trained
    pw, pl = p[0].tolist(), p[1].tolist()
    greater = sum(pw[i] * pl[j] for i in range(5) for j in range(5) if i > j)
    tie = sum(pw[i] * pl[i] for i in range(5))
    assert out["loss"] == pytest.approx(-math.log(greater))
    half = distribution_summary(logp[:1], logp[1:2], ties="half")["loss"]
    assert half == pytest.approx(-math.log(greater + tie / 2))
    assert head_log_probs("categorical", torch.zeros(1, 4), 4).exp().sum().item() == pytest.approx(
        1.0
    )


def test_std_of_a_point_mass_has_a_finite_gradient():
    p = POINT.clone().requires_grad_(True)
    values = torch.arange(p.shape[-1], dtype=p.dtype, requires_grad=True)
    out = fn.std(p, values)
    out.sum().backward()
    assert out.item() == 0
    assert torch.isfinite(p.grad).all() and torch.isfinite(values.grad).all()
