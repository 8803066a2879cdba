"""The disagreement measures on hand-computed values and brute force: centred spread, group
gap and contested pairs, ranks and partial Spearman, AUROC and its intervals, the contested
detectors."""

from __future__ import annotations

import math

import numpy as np
import pytest

from distalign.disagreement import (
    auroc,
    average_ranks,
    bootstrap_auroc_interval,
    centred_spread,
    contested,
    group_gap,
    partial_spearman,
    spearman,
)


def test_centred_spread_ignores_an_annotators_constant_per_prompt():
    # annotator 2 = annotator 1 + 2 on prompt "a" and − 7 on prompt "b": Bradley–Terry cannot
    # tell them apart, so the centred spread is 0 while the raw std is not
    r1 = np.array([1.0, 2.0, 4.0, 0.0, 3.0])
    r2 = r1 + np.array([2.0, 2.0, 2.0, -7.0, -7.0])
    ids = np.array(["a", "a", "a", "b", "b"])
    np.testing.assert_allclose(centred_spread(np.stack([r1, r2]), ids), 0.0, atol=1e-12)
    assert np.std(np.stack([r1, r2]), axis=0).min() > 0.9


def test_centred_spread_by_hand():
    # prompt a: annotator 1 rewards (0, 2) -> centred (−1, 1); annotator 2 (2, 0) -> (1, −1)
    # so each reply's centred rewards are ±1 and their std is 1; a lone reply's spread is 0
    rewards = np.array([[0.0, 2.0, 5.0], [2.0, 0.0, 9.0]])
    np.testing.assert_allclose(centred_spread(rewards, [7, 7, 3]), [1.0, 1.0, 0.0])
    # weights 0.75 / 0.25 on centred values (−1, 1): mean −0.5, variance .75·.25 + .25·2.25
    np.testing.assert_allclose(
        centred_spread(rewards, [7, 7, 3], weights=np.array([0.75, 0.25]))[:2],
        np.sqrt(0.75 * 0.25 + 0.25 * 2.25),
    )


def test_centred_spread_brute_force():
    rng = np.random.default_rng(0)
    rewards, ids = rng.normal(size=(5, 12)), rng.integers(0, 4, size=12)
    want = [
        np.std([rewards[a, j] - rewards[a, ids == ids[j]].mean() for a in range(5)])
        for j in range(12)
    ]
    np.testing.assert_allclose(centred_spread(rewards, ids), want)


def test_group_gap_and_contested():
    p = np.array([[0.2, 0.7], [0.6, 0.9], [0.5, 0.4], [0.3, 0.3]])
    np.testing.assert_allclose(group_gap(p), [0.5, 0.3, 0.1, 0.0])
    np.testing.assert_array_equal(contested(p), [True, False, False, False])  # ½ sides with none
    rows = [{"concise": 0.2, "thorough": 0.7}, {"concise": 0.6, "thorough": 0.9}]
    np.testing.assert_allclose(group_gap(rows), [0.5, 0.3])  # a benchmark file's dicts
    np.testing.assert_array_equal(contested({"c": [0.9, 0.1], "t": [0.1, 0.2]}), [True, False])
    three = np.array([[0.1, 0.55, 0.9], [0.6, 0.7, 0.8]])  # max − min over any number of groups
    np.testing.assert_allclose(group_gap(three), [0.8, 0.2])
    np.testing.assert_array_equal(contested(three), [True, False])
    assert group_gap(np.zeros((0, 2))).shape == contested(np.zeros((0, 2))).shape == (0,)


def test_average_ranks_share_ties():
    np.testing.assert_allclose(average_ranks(np.array([3.0, 1.0, 3.0, 2.0, 3.0])), [4, 1, 4, 2, 4])


def test_partial_spearman_matches_the_formula_and_removes_a_shared_cause():
    rng = np.random.default_rng(1)
    z = rng.normal(size=400)
    x, y = z + 0.5 * rng.normal(size=400), z + 0.5 * rng.normal(size=400)
    assert spearman(x, y) > 0.6 and abs(partial_spearman(x, y, z)) < 0.15  # only z in common
    rxy, rxz, ryz = spearman(x, y), spearman(x, z), spearman(y, z)
    want = (rxy - rxz * ryz) / math.sqrt((1 - rxz**2) * (1 - ryz**2))
    assert partial_spearman(x, y, z) == pytest.approx(want, abs=1e-9)
    w = x + rng.normal(size=400)  # x and w share more than z
    assert partial_spearman(x, w, z) > 0.3


def test_partial_spearman_nan_for_constant_or_determined_inputs():
    x, z = np.array([1.0, 2.0, 3.0, 4.0]), np.array([4.0, 1.0, 2.0, 3.0])
    assert math.isnan(partial_spearman(np.ones(4), x, z))  # constant x
    assert math.isnan(partial_spearman(x, z, x**3))  # x a monotone function of z
    assert math.isnan(partial_spearman(x[:2], z[:2], x[:2]))  # too few values
    assert math.isnan(spearman(np.ones(3), np.arange(3.0)))


def _auroc_pairs(scores, labels):
    pos, neg = scores[labels == 1], scores[labels == 0]
    return np.mean([(p > q) + 0.5 * (p == q) for p in pos for q in neg])


def test_auroc_by_hand_and_brute_force():
    assert auroc([0.1, 0.4, 0.35, 0.8], [0, 0, 1, 1]) == pytest.approx(0.75)  # 3 of 4 pairs
    assert auroc([1.0, 1.0, 1.0], [0, 1, 1]) == 0.5  # all ties: ½ each
    assert auroc([2.0, 1.0], [0, 1]) == 0.0 and auroc([1.0, 2.0], [0, 1]) == 1.0
    assert math.isnan(auroc([1.0, 2.0], [1, 1])) and math.isnan(auroc([], []))
    rng = np.random.default_rng(2)
    for _ in range(20):
        scores = rng.integers(0, 6, size=30).astype(float)  # many ties
        labels = rng.integers(0, 2, size=30)
        assert auroc(scores, labels) == pytest.approx(_auroc_pairs(scores, labels))


def test_bootstrap_auroc_interval():
    rng = np.random.default_rng(3)
    labels = rng.random(300) < 0.3
    scores = labels + rng.normal(size=300)  # AUROC ≈ Φ(1/√2) ≈ 0.76
    lo, hi = bootstrap_auroc_interval(scores, labels, n=500, seed=0)
    assert lo < auroc(scores, labels) < hi
    assert lo > 0.6 and hi < 0.9
    assert (lo, hi) == bootstrap_auroc_interval(scores, labels, n=500, seed=0)  # seeded
    # the vectorised resample agrees with auroc on one resample drawn the same way
    idx = np.random.default_rng(0).integers(0, 300, size=(1, 300))[0]
    assert bootstrap_auroc_interval(scores, labels, n=1, seed=0, level=0.0)[0] == pytest.approx(
        auroc(scores[idx], labels[idx])
    )
    assert all(math.isnan(v) for v in bootstrap_auroc_interval(scores, np.zeros(300), n=50))
    assert all(math.isnan(v) for v in bootstrap_auroc_interval([], [], n=50))


def test_paired_auroc_difference():
    from distalign.disagreement import auroc, paired_auroc_difference

    rng = np.random.default_rng(1)
    labels = rng.random(300) < 0.4
    good, noise = labels + rng.normal(0, 0.8, 300), rng.normal(0, 1, 300)
    same = paired_auroc_difference(good, good, labels, n=200)
    assert same == {"difference": 0.0, "lo": 0.0, "hi": 0.0, "p_not_above": 1.0}
    out = paired_auroc_difference(good, noise, labels, n=500)
    assert out["difference"] == pytest.approx(auroc(good, labels) - auroc(noise, labels))
    assert 0 < out["lo"] < out["difference"] < out["hi"] and out["p_not_above"] == 0.0
    # one resample, drawn as the function draws it, is the difference on that resample
    idx = np.random.default_rng(0).integers(0, 300, size=(1, 300))[0]
    one = paired_auroc_difference(good, noise, labels, n=1, seed=0, level=0.0)
    assert one["lo"] == pytest.approx(
        auroc(good[idx], labels[idx]) - auroc(noise[idx], labels[idx])
    )
    with pytest.raises(ValueError, match="units"):
        paired_auroc_difference(good, noise[:5], labels)


def test_contested_detection_by_hand():
    from distalign.disagreement import contested_detection

    p = np.array([[0.2, 0.7], [0.8, 0.9], [0.6, 0.3], [0.4, 0.45]])  # contested: 1, 0, 1, 0
    margin, spread = np.array([0.1, 2.0, -0.5, 0.4]), np.array([1.0, 1.0, 0.1, 3.0])
    out = contested_detection(margin, spread, p, n=100)
    assert out["contested_share"] == 0.5 and out["contested_pairs"] == 2
    # −|Δ| = (−.1, −2, −.5, −.4): contested −.1 beats −2 and −.4, −.5 beats −2 only -> 3/4
    assert out["contested_auroc_margin"] == 0.75
    assert out["contested_auroc_spread"] == 0.125  # spreads (1, .1) vs (1, 3): ½ + 0 + 0 + 0
    # −|Δ|/σ = (−.1, −2, −5, −.13): −.1 beats −2 and −.13; −5 beats nothing -> 2/4
    assert out["contested_auroc"] == 0.5 and out["contested_detector"] == "-|margin|/spread"
    scalar = contested_detection(margin, None, p, n=100)
    assert scalar["contested_auroc"] == 0.75 and "contested_auroc_spread" not in scalar
    with pytest.raises(ValueError, match="pairs"):
        contested_detection(margin[:3], None, p)


def test_opposite_leanings_by_hand():
    from itertools import permutations

    from distalign.disagreement import opposite_leanings

    m = np.array([[2.0, -1.0], [2.0, 1.0], [0.0, 3.0], [-4.0, 4.0]])
    lean = 1 / (1 + np.exp(-m)) - 0.5
    expected = -lean[:, 0] * lean[:, 1]  # two components: minus the product of the leanings
    np.testing.assert_allclose(opposite_leanings(m), expected, rtol=1e-12)
    score = opposite_leanings(m)
    assert score[0] > 0 > score[1] and score[2] == 0.0  # opposite / same way / one indifferent
    assert score[3] > score[0]  # surer opposite leanings score higher
    assert opposite_leanings(np.array([[50.0, -50.0]]))[0] == pytest.approx(0.25)
    # K components: minus the mean over ordered distinct pairs k != l, by brute force
    rng = np.random.default_rng(0)
    m3 = rng.normal(0, 2, size=(6, 3))
    lean3 = 1 / (1 + np.exp(-m3)) - 0.5
    brute = [-np.mean([r[k] * r[j] for k, j in permutations(range(3), 2)]) for r in lean3]
    np.testing.assert_allclose(opposite_leanings(m3), brute, rtol=1e-10, atol=1e-15)
    with pytest.raises(ValueError, match="K >= 2"):
        opposite_leanings(np.zeros((3, 1)))


def test_contested_detection_with_components():
    from distalign.disagreement import auroc, contested, contested_detection, opposite_leanings

    p = np.array([[0.2, 0.7], [0.8, 0.9], [0.6, 0.3], [0.4, 0.45]])  # contested: 1, 0, 1, 0
    comps = np.array([[-1.0, 1.5], [2.0, 2.5], [1.0, -0.2], [0.1, -0.1]])
    margin, spread = comps.mean(1), comps.std(1)
    out = contested_detection(margin, spread, p, n=100, components=comps)
    assert out["contested_detector"] == "opposite leanings of the components"
    # leanings: −ℓ1ℓ2 > 0 for the two contested pairs and for pair 4 (0.1, −0.1: barely);
    # pair 4's product is tiny, so both contested pairs outrank it: AUROC 1
    assert out["contested_auroc"] == auroc(opposite_leanings(comps), contested(p)) == 1.0
    ratio = contested_detection(margin, spread, p, n=100)["contested_auroc"]
    assert out["contested_auroc_ratio"] == ratio  # the former detector, kept beside it
    assert (
        out["contested_auroc_margin"]
        == contested_detection(margin, None, p)["contested_auroc_margin"]
    )
    with pytest.raises(ValueError, match="component margins"):
        contested_detection(margin, spread, p, components=comps[:3])


def test_spread_agreement_sees_past_length():
    from distalign.disagreement import spread_agreement

    # two annotators weigh length ±1 and each has an offset per prompt; reply j of a prompt
    # also has a true disagreement d (annotator 1 gets +d, annotator 2 gets −d)
    rng = np.random.default_rng(4)
    prompts, k = 60, 4
    ids = np.repeat(np.arange(prompts), k)
    length = rng.integers(5, 200, size=prompts * k).astype(float)
    d = rng.random(prompts * k)
    offset = rng.normal(scale=5.0, size=(2, prompts))[:, ids]
    rewards = np.stack([length / 50 + d, -length / 50 - d]) + offset  # (2, R)
    centred = centred_spread(rewards, ids)
    by_length = spread_agreement(length, rewards, ids, length)  # a "model" that predicts length
    assert by_length["spearman_raw"] > by_length["spearman_centred"]
    assert by_length["predicted_vs_length"] == pytest.approx(1.0)
    assert math.isnan(by_length["partial_centred_given_length"])  # nothing beyond length
    good = spread_agreement(centred, rewards, ids, length)  # predicts the centred truth
    assert good["spearman_centred"] == pytest.approx(1.0)
    assert good["partial_centred_given_length"] > 0.9
    raw = np.std(rewards, axis=0)
    assert good["raw_vs_length"] == pytest.approx(spearman(raw, length))


def test_a_clustered_bootstrap_draws_whole_clusters():
    from distalign.disagreement import paired_auroc_difference, resample_counts

    clusters = np.repeat(np.array([7, 3, 9, 5]), [1, 2, 3, 4])  # 4 prompts of 1–4 pairs
    counts = resample_counts(10, 500, seed=0, clusters=clusters)
    for c in np.unique(clusters):  # a prompt's pairs come together, as often as each other
        assert (counts[:, clusters == c] == counts[:, clusters == c][:, :1]).all()
    per_cluster = np.stack([counts[:, clusters == c][:, 0] for c in np.unique(clusters)], 1)
    assert (per_cluster.sum(1) == 4).all()  # as many prompts as there are, with replacement
    assert set(counts.sum(1)) > {10}  # so the number of pairs varies
    # one resample of the AUROC is the AUROC of the units it draws, repeated as drawn
    rng = np.random.default_rng(2)
    labels = np.tile([True, False], 40)
    prompts = np.repeat(np.arange(8), 10)
    scores = labels + rng.normal(0, 1, 80)
    one = resample_counts(80, 1, seed=4, clusters=prompts)[0]
    drawn = np.repeat(np.arange(80), one)
    lo, _ = bootstrap_auroc_interval(scores, labels, n=1, seed=4, level=0.0, clusters=prompts)
    assert lo == pytest.approx(auroc(scores[drawn], labels[drawn]))
    # a shared per-prompt shift makes pairs of a prompt alike: prompts, not pairs, are the units
    shift = np.repeat(rng.normal(0, 2, 8), 10)
    a, b = labels + shift + rng.normal(0, 1, 80), shift + rng.normal(0, 1, 80)
    by_pair = paired_auroc_difference(a, b, labels, n=2000)
    by_prompt = paired_auroc_difference(a, b, labels, n=2000, clusters=prompts)
    assert by_prompt["difference"] == by_pair["difference"]
    assert by_prompt["hi"] - by_prompt["lo"] > by_pair["hi"] - by_pair["lo"]
    with pytest.raises(ValueError, match="cluster ids"):
        resample_counts(5, 2, seed=0, clusters=[1, 2])
