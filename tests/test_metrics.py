"""The pure measures on hand-computed values: accuracy against the truth, Bayes ceiling,
bootstrap interval, win rate, distinct-n, values at matched KL."""

from __future__ import annotations

import math

import numpy as np
import pytest

from distalign.metrics import (
    accuracy_vs_truth,
    bayes_accuracy,
    bootstrap_interval,
    bootstrap_p_value,
    distinct_n,
    reward_summary,
    win_rate,
)


def test_bayes_accuracy_picks_the_likelier_reply():
    assert bayes_accuracy(np.array([0.9, 0.2, 0.5])) == pytest.approx((0.9 + 0.8 + 0.5) / 3)
    assert bayes_accuracy(np.array([0.0, 1.0])) == 1.0  # labels without noise
    assert math.isnan(bayes_accuracy(np.array([])))


def test_a_scalar_reward_models_held_out_loss_is_the_labels_negative_log_likelihood():
    import torch

    chosen, rejected = torch.tensor([2.0, 0.0, -1.0]), torch.tensor([0.0, 0.0, 1.0])
    out = reward_summary(chosen, rejected)
    # −log σ(r_w − r_l) = log(1 + e^−(r_w − r_l)), averaged: what Bradley–Terry training minimises
    assert out["loss"] == pytest.approx(
        (math.log1p(math.exp(-2)) + math.log(2) + math.log1p(math.exp(2))) / 3
    )
    assert math.isnan(reward_summary(chosen[:0], rejected[:0])["loss"])


def test_accuracy_vs_truth_by_hand_and_over_label_draws():
    import torch

    p = np.array([0.9, 0.2, 0.6, 0.7])
    chosen, rejected = torch.tensor([2.0, 2.0, 1.0, 0.0]), torch.tensor([1.0, 3.0, 1.0, 0.5])
    # right, wrong, tie, wrong: p₁ + (1 − p₂) + ½ + (1 − p₄)
    assert accuracy_vs_truth(chosen, rejected, p) == pytest.approx((0.9 + 0.8 + 0.5 + 0.3) / 4)
    # the best predictor (pick the likelier side) meets the Bayes ceiling exactly
    likelier = torch.tensor(p - 0.5)
    assert accuracy_vs_truth(likelier, torch.zeros(4), p) == pytest.approx(bayes_accuracy(p))
    # the mean over many label draws of the observed accuracy
    rng = np.random.default_rng(0)
    q = rng.uniform(size=50)
    scores = torch.tensor(rng.normal(size=50))
    labels = rng.uniform(size=(20_000, 50)) < q  # True: the first reply is preferred
    observed = np.where(labels, scores.numpy() > 0, scores.numpy() < 0).mean()
    assert accuracy_vs_truth(scores, torch.zeros(50), q) == pytest.approx(observed, abs=2e-3)
    assert math.isnan(accuracy_vs_truth(torch.zeros(0), torch.zeros(0), np.array([])))
    with pytest.raises(ValueError, match="p_chosen has"):  # a truth per pair, no broadcasting
        accuracy_vs_truth(chosen, rejected, np.array([0.5]))


def test_bootstrap_interval_by_hand():
    # two values 0 and 1: a resample's mean is 0, ½ or 1 with probability ¼, ½, ¼, so the
    # 2.5% and 97.5% quantiles of many resampled means are 0 and 1, and the 30% and 70% ones ½
    assert bootstrap_interval(np.array([0.0, 1.0]), n=4000) == (0.0, 1.0)
    assert bootstrap_interval(np.array([0.0, 1.0]), n=4000, level=0.4) == (0.5, 0.5)
    assert bootstrap_interval(np.full(7, 0.3)) == pytest.approx((0.3, 0.3))  # no spread
    assert all(math.isnan(v) for v in bootstrap_interval(np.array([])))
    # one value (one prompt): no interval and no p-value, not a zero-width "certainty"
    assert all(math.isnan(v) for v in bootstrap_interval(np.array([0.9])))
    assert math.isnan(bootstrap_p_value(np.array([0.9]), 0.5))


def test_bootstrap_interval_is_seeded():
    values = np.random.default_rng(0).random(50)
    assert bootstrap_interval(values, seed=1) == bootstrap_interval(values, seed=1)
    assert bootstrap_interval(values, seed=1) != bootstrap_interval(values, seed=2)


def test_bootstrap_interval_covers_a_known_win_rate():
    """Synthetic scores with a true win rate of 0.6: the 95% interval covers it ~95% of the time."""
    rng = np.random.default_rng(0)
    covered = 0
    for trial in range(200):
        wins = (rng.random(150) < 0.6).astype(float)
        lo, hi = bootstrap_interval(wins, n=500, seed=trial)
        covered += lo <= 0.6 <= hi
    assert 0.88 <= covered / 200 <= 0.99


def test_win_rate_averages_every_pair_of_a_prompt():
    a = np.array([[1.0, 3.0], [0.0, 0.0]])
    b = np.array([[2.0, 1.0], [0.0, 1.0]])
    # prompt 0: 1>2 no, 1>1 tie, 3>2, 3>1 -> (0 + .5 + 1 + 1) / 4; prompt 1: (.5 + 0 + .5 + 0) / 4
    np.testing.assert_allclose(win_rate(a, b), [0.625, 0.25])
    np.testing.assert_allclose(win_rate(np.array([1.0, 0.0]), np.array([0.0, 0.0])), [1.0, 0.5])
    np.testing.assert_allclose(win_rate(a, a), [0.5, 0.5])  # a policy against itself
    np.testing.assert_allclose(win_rate(b, a), 1 - win_rate(a, b))  # the other side's share


def test_win_rate_with_different_replies_per_prompt():
    a = np.array([[2.0], [0.0]])  # (2 prompts, 1 reply)
    b = np.array([[1.0, 2.0, 3.0], [0.0, -1.0, -2.0]])  # (2 prompts, 3 replies)
    # prompt 0: 2>1, 2=2, 2<3 -> 1.5/3; prompt 1: tie, win, win -> 2.5/3
    np.testing.assert_allclose(win_rate(a, b), [0.5, 2.5 / 3])


def test_distinct_n():
    assert distinct_n(["a b a b"], 2) == pytest.approx(2 / 3)  # (a b), (b a), (a b)
    assert distinct_n(["a b a b"], 1) == pytest.approx(2 / 4)
    assert distinct_n(["a b", "a b"], 2) == pytest.approx(1 / 2)  # repeats across replies count
    assert distinct_n(["a"], 2) == 0.0  # no bigram at all
    assert distinct_n([""], 1) == 0.0


# --- disagreement measures that do not reduce to length ------------------------------------


def test_at_first_crossing_interpolates_the_first_segment_that_reaches_the_target():
    from distalign.metrics import at_first_crossing

    kl = [0.0, 2.0, 6.0, 4.0, 8.0]
    gold = [1.0, 2.0, 4.0, 0.0, 3.0]
    assert at_first_crossing(kl, gold, 0.0) == 1.0
    assert at_first_crossing(kl, gold, 1.0) == pytest.approx(1.5)
    assert at_first_crossing(kl, gold, 2.0) == 2.0  # a point on the target
    assert at_first_crossing(kl, gold, 5.0) == pytest.approx(3.5)  # not the later 6 -> 4 dip
    assert at_first_crossing(kl, gold, 7.0) == pytest.approx(2.25)  # first reached going 4 -> 8
    assert np.isnan(at_first_crossing(kl, gold, 9.0))
    assert np.isnan(at_first_crossing([], [], 1.0))
    assert at_first_crossing([3.0, 1.0], [0.0, 1.0], 2.0) == pytest.approx(0.5)  # downwards


def _holm_by_hand(p):
    """Holm's procedure written out: step down the sorted p-values, each adjusted value the
    largest of (m − j + 1)·p₍ⱼ₎ so far, capped at 1."""
    order = sorted(range(len(p)), key=lambda i: p[i])
    out, running = [0.0] * len(p), 0.0
    for j, i in enumerate(order):
        running = max(running, min(1.0, (len(p) - j) * p[i]))
        out[i] = running
    return out


def test_holm_against_the_procedure_written_out():
    from hypothesis import given, settings
    from hypothesis import strategies as st

    from distalign.metrics import holm

    @settings(max_examples=200, deadline=None)
    @given(st.lists(st.floats(0.0, 1.0), min_size=1, max_size=8))
    def check(p):
        assert holm(p).tolist() == pytest.approx(_holm_by_hand(p))

    check()
    assert holm([0.01, 0.04, 0.03]).tolist() == pytest.approx([0.03, 0.06, 0.06])
    assert holm([0.3]).tolist() == [0.3]  # one test: nothing to correct


def test_bootstrap_p_value_agrees_with_the_interval():
    from distalign.metrics import bootstrap_p_value

    rng = np.random.default_rng(0)
    for shift in np.linspace(0.0, 0.3, 13):
        values = rng.uniform(0, 1, 40) * 0.6 + 0.2 + shift - 0.15  # means around 0.35–0.65
        lo, hi = bootstrap_interval(values, 2000, seed=1)
        p = bootstrap_p_value(values, 0.5, 2000, seed=1)
        if lo > 0.5 or hi < 0.5:
            assert p <= 0.05 + 2 / 2000
        else:
            assert p >= 0.05 - 2 / 2000
    assert bootstrap_p_value(np.full(10, 0.5), 0.5) == 1.0
    assert bootstrap_p_value(np.full(10, 0.9), 0.5) == 0.0
    assert math.isnan(bootstrap_p_value(np.array([]), 0.5))
