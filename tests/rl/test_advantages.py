"""Advantage estimators (distalign.losses) against hand-computed values and brute force, their
edges, and their selection in ``rl train`` (``baseline``)."""

from __future__ import annotations

import math
import re

import pytest
import torch

from distalign.losses import (
    dr_grpo_advantages,
    grpo_advantages,
    grpo_batch_advantages,
    moving_average_advantages,
    moving_average_update,
    reinforce_pp_advantages,
    remax_advantages,
    rloo_advantages,
    uncertainty_scaled,
    whiten,
)
from distalign.rl.config import BASELINES, RLTrainConfig
from distalign.rl.train import TrainState, advantages_for


def _sample_std(xs: list[float]) -> float:
    m = sum(xs) / len(xs)
    return math.sqrt(sum((x - m) ** 2 for x in xs) / (len(xs) - 1))


def _rewards(p: int, k: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(p * k, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


# --- hand-computed values --------------------------------------------------------------------


def test_grpo_by_hand():
    # group 1: mean 2, sample std 1; group 2: mean 0, std 2 (values −2, 0, 2)
    r = torch.tensor([1.0, 2.0, 3.0, -2.0, 0.0, 2.0])
    expected = [-1 / (1 + 1e-4), 0.0, 1 / (1 + 1e-4), -2 / (2 + 1e-4), 0.0, 2 / (2 + 1e-4)]
    assert grpo_advantages(r, 3).tolist() == pytest.approx(expected)


def test_grpo_keeps_the_kl_penalty_out_of_the_std_scaling():
    """A group whose rewards tie gets only its β·KL differences, at β's weight, not KL noise
    scaled up to unit size; an informative group gets its scaled rewards minus the same."""
    rewards = torch.tensor([1.0, 1.0, 1.0, 1.0, 0.0, 1.0, 0.0, 1.0])
    penalty = 0.05 * torch.tensor([0.04, 0.03, 0.02, 0.01, 0.02, 0.02, 0.03, 0.01])
    adv = grpo_advantages(rewards, 4, penalty=penalty)
    assert adv[:4].tolist() == pytest.approx((-(penalty[:4] - penalty[:4].mean())).tolist())
    assert adv[:4].abs().max() < 1e-3  # was ±1.0 with the penalty inside the std
    expected = grpo_advantages(rewards, 4)[4:] - (penalty[4:] - penalty[4:].mean())
    assert adv[4:].tolist() == pytest.approx(expected.tolist())
    # through rl train's dispatcher: shaped = rewards − penalty
    cfg = _cfg("grpo", k=4)
    shaped = rewards - penalty
    dispatched, _ = advantages_for(cfg, shaped, None, TrainState(), rewards=rewards)
    assert dispatched.tolist() == pytest.approx(adv.tolist(), abs=1e-6)  # fp32 r − shaped


def test_grpo_batch_by_hand_divides_by_the_whole_batch_s_std():
    """TRL GRPO's scale_rewards=batch: group mean out, ÷ (sample std of every reward + 1e-4)."""
    r = torch.tensor([1.0, 2.0, 3.0, -2.0, 0.0, 2.0])
    s = _sample_std(r.tolist())
    centred = [-1.0, 0.0, 1.0, -2.0, 0.0, 2.0]
    want = [c / (s + 1e-4) for c in centred]
    assert grpo_batch_advantages(r, 3).tolist() == pytest.approx(want)
    # the batch is every process's: this process's share is scaled by the pooled std; an
    # unscored (NaN) reward stays out of it
    other = torch.tensor([10.0, -10.0, float("nan")])
    pooled = torch.cat([r, other])
    s_all = _sample_std([*r.tolist(), 10.0, -10.0])
    got = grpo_batch_advantages(r, 3, pooled=pooled)
    assert got.tolist() == pytest.approx([c / (s_all + 1e-4) for c in centred])
    # relative sizes kept across groups, unlike GRPO's per-group std
    assert got[5] / got[2] == pytest.approx(2.0) and grpo_advantages(r, 3)[5] / grpo_advantages(
        r, 3
    )[2] == pytest.approx(1.0, rel=1e-3)
    # a tied batch: zeros, never NaN; the KL penalty centred in the group, after the division
    assert grpo_batch_advantages(torch.ones(4), 2).tolist() == [0.0] * 4
    penalty = torch.tensor([0.1, 0.3, 0.2, 0.2, 0.2, 0.2])
    with_cost = grpo_batch_advantages(r, 3, penalty=penalty)
    cost = [-0.1, 0.1, 0.0, 0.0, 0.0, 0.0]
    assert with_cost.tolist() == pytest.approx([w - c for w, c in zip(want, cost, strict=True)])


def test_grpo_batch_through_rl_train_takes_every_process_s_rewards():
    rewards = torch.tensor([1.0, 2.0, 3.0, -2.0, 0.0, 2.0])
    penalty = torch.tensor([0.1, 0.3, 0.0, 0.2, 0.2, 0.2])
    other = torch.tensor([4.0, 5.0, 9.0])  # another process's rewards
    gather = lambda x: torch.cat([x, other if x.dtype == other.dtype else x])  # noqa: E731
    cfg = _cfg("grpo_batch", k=3)
    adv, _ = advantages_for(cfg, rewards - penalty, None, TrainState(), gather=gather,
                            rewards=rewards)  # fmt: skip
    want = grpo_batch_advantages(rewards, 3, penalty=penalty, pooled=torch.cat([rewards, other]))
    torch.testing.assert_close(adv, want, rtol=1e-5, atol=1e-6)
    # an unscored reply: out of its group and of the batch's std, advantage 0
    holed = rewards.clone()
    holed[1] = float("nan")
    adv, _ = advantages_for(cfg, holed - penalty, None, TrainState(), gather=gather,
                            rewards=holed)  # fmt: skip
    pooled = torch.cat([holed, other])
    first = grpo_batch_advantages(holed[[0, 2]], 2, penalty=penalty[[0, 2]], pooled=pooled)
    second = grpo_batch_advantages(holed[3:], 3, penalty=penalty[3:], pooled=pooled)
    assert adv[1] == 0.0
    torch.testing.assert_close(adv[[0, 2, 3, 4, 5]], torch.cat([first, second]), rtol=1e-5,
                               atol=1e-6)  # fmt: skip


def test_dr_grpo_by_hand():
    r = torch.tensor([1.0, 2.0, 3.0, -2.0, 0.0, 5.0])
    assert dr_grpo_advantages(r, 3).tolist() == pytest.approx([-1.0, 0.0, 1.0, -3.0, -1.0, 4.0])


def test_reinforce_pp_by_hand():
    r = torch.tensor([1.0, 3.0, 5.0, 7.0])  # mean 4, population std √5
    s = math.sqrt(5)
    assert reinforce_pp_advantages(r).tolist() == pytest.approx([-3 / s, -1 / s, 1 / s, 3 / s])
    # with the group baseline (k = 2): R − group mean = (−1, 1, −1, 1), batch std 1
    assert reinforce_pp_advantages(r, k=2).tolist() == pytest.approx([-1.0, 1.0] * 2)
    # over tokens: replies of 1 and 3 tokens -> tokens (1, 3, 3, 3): mean 2.5, std √0.75
    two, n = torch.tensor([1.0, 3.0]), torch.tensor([1, 3])
    s = math.sqrt(0.75)
    assert reinforce_pp_advantages(two, lengths=n).tolist() == pytest.approx([-1.5 / s, 0.5 / s])


@pytest.mark.parametrize("k", [None, 2])
def test_reinforce_pp_whitens_over_tokens_as_openrlhf(k):
    """Each reply's advantage on each of its tokens, whitened over the batch's tokens (masked
    mean, population variance, √ clamped at 1e-8), as OpenRLHF's experience maker does."""
    r = _rewards(4, 2, seed=3)
    n = torch.tensor([40, 2, 2, 2, 3, 3, 3, 50])
    x = r if k is None else (r.view(-1, k) - r.view(-1, k).mean(-1, keepdim=True)).view(-1)
    tokens = x.repeat_interleave(n)  # one row per token
    mean = tokens.mean()
    rstd = ((tokens - mean) ** 2).mean().clamp(min=1e-8).rsqrt()
    want = (x - mean) * rstd
    torch.testing.assert_close(reinforce_pp_advantages(r, k, lengths=n), want)
    # two processes, each with every process's rewards and token counts
    halves = [reinforce_pp_advantages(h, k, pooled=r, pooled_lengths=n) for h in r.split(4)]
    torch.testing.assert_close(torch.cat(halves), want)
    # rl train hands the token counts over: the same advantages
    cfg = _cfg("reinforce_pp" if k is None else "reinforce_pp_baseline")
    adv, _ = advantages_for(cfg, r, None, TrainState(), pooled=r, lengths=n)
    torch.testing.assert_close(adv, want)
    # a reply no reward source scored leaves the statistics, its tokens too
    gap = r.clone()
    gap[1] = float("nan")
    adv, _ = advantages_for(_cfg("reinforce_pp"), gap, None, TrainState(), pooled=gap, lengths=n)
    keep = torch.arange(8) != 1
    torch.testing.assert_close(adv[keep], reinforce_pp_advantages(r[keep], lengths=n[keep]))
    assert adv[1] == 0


def test_remax_by_hand():
    r = torch.tensor([1.0, 2.0, 3.0, 4.0])
    greedy = torch.tensor([1.5, 5.0])
    assert remax_advantages(r, greedy, 2).tolist() == [-0.5, 0.5, -2.0, -1.0]
    assert remax_advantages(r, r, 1).tolist() == [0.0] * 4  # k = 1: one sample per prompt
    with pytest.raises(ValueError, match="greedy"):
        remax_advantages(r, greedy, 3)


# --- brute force and identities --------------------------------------------------------------


@pytest.mark.parametrize("k", [2, 3, 5])
def test_group_estimators_against_brute_force(k):
    r = _rewards(4, k, seed=k)
    grpo, dr, rloo = grpo_advantages(r, k), dr_grpo_advantages(r, k), rloo_advantages(r, k)
    for i in range(len(r)):
        group = r[(i // k) * k : (i // k + 1) * k].tolist()
        mean = sum(group) / k
        others = (sum(group) - r[i].item()) / (k - 1)
        assert dr[i].item() == pytest.approx(r[i].item() - mean)
        assert grpo[i].item() == pytest.approx((r[i].item() - mean) / (_sample_std(group) + 1e-4))
        assert rloo[i].item() == pytest.approx(r[i].item() - others)
    # Dr. GRPO is RLOO scaled by (k − 1)/k; each prompt's advantages sum to zero
    torch.testing.assert_close(dr, (k - 1) / k * rloo)
    for adv in (grpo, dr, rloo):
        torch.testing.assert_close(adv.view(-1, k).sum(-1), torch.zeros(4, dtype=r.dtype))


@pytest.mark.parametrize("k", [None, 2, 4])
def test_reinforce_pp_against_brute_force_and_global_over_processes(k):
    r = _rewards(6, 4, seed=1)  # 24 rewards, 6 prompts of 4 samples
    centred = r.tolist()
    if k:
        group_means = [sum(r[(i // k) * k : (i // k + 1) * k].tolist()) / k for i in range(len(r))]
        centred = [x - m for x, m in zip(centred, group_means, strict=True)]
    mean = sum(centred) / len(centred)
    std = math.sqrt(sum((x - mean) ** 2 for x in centred) / len(centred))  # population
    got = reinforce_pp_advantages(r, k)
    assert got.tolist() == pytest.approx([(x - mean) / std for x in centred])
    # two processes holding half of the prompts each, with every process's rewards pooled,
    # get exactly the halves of the one-process result
    halves = [reinforce_pp_advantages(h, k, pooled=r) for h in r.split(12)]
    torch.testing.assert_close(torch.cat(halves), got)
    assert not torch.allclose(torch.cat([reinforce_pp_advantages(h, k) for h in r.split(12)]), got)


def test_moving_average_uses_the_batch_mean_without_history():
    r = torch.tensor([1.0, 3.0])
    adv, base = moving_average_advantages(r, mean=0.0, count=0)
    assert base == 2.0 and adv.tolist() == [-1.0, 1.0]
    # every process's rewards decide the first baseline when given
    adv, base = moving_average_advantages(r, 0.0, 0, pooled=torch.tensor([1.0, 3.0, 5.0, 7.0]))
    assert base == 4.0 and adv.tolist() == [-3.0, -1.0]
    # with history, the past mean (the step's rewards are added after)
    mean, count = moving_average_update(0.0, 0, r)
    adv, base = moving_average_advantages(torch.tensor([6.0]), mean, count)
    assert base == 2.0 and adv.tolist() == [4.0]


def test_uncertainty_scaling_can_push_a_confident_below_average_reply_up():
    """The docstring's example, as the exact expected gradient of a softmax policy over three
    replies: d/dθ_j E[A] = π_j (A_j − Σ_i π_i A_i)."""
    rewards = torch.tensor([-1.0, -3.0, 4.0])
    sigma = torch.tensor([0.0, 0.0, 100.0])
    pi = torch.full((3,), 1 / 3)
    adv = rewards - (pi * rewards).sum()  # baseline b = E[R] = 0

    def expected_gradient(a: torch.Tensor) -> torch.Tensor:
        return pi * (a - (pi * a).sum())

    assert expected_gradient(adv)[0] < 0  # plain REINFORCE: the reply at −1 loses probability
    scaled = uncertainty_scaled(adv, sigma)
    assert scaled.tolist() == pytest.approx([-1.0, -3.0, 4 / 101])
    assert expected_gradient(scaled)[0] > 0  # scaled: it gains, though below average, σ = 0
    assert (scaled.sign() == adv.sign()).all()  # per sample, no sign ever flips


# --- edges -----------------------------------------------------------------------------------


def test_constant_rewards_give_zero_advantages_in_fp32():
    """0.1 is not an fp32 sum's friend: its batch mean is off by an ulp, which a fp32 whitening
    with ε = 1e-8 turned into ±0.41 advantages."""
    r = torch.full((8,), 0.1)
    x = r - r.mean()
    assert (x / (x.std() + 1e-8)).abs().max() > 0.1  # the bug, in fp32
    for adv in (
        whiten(r),
        grpo_advantages(r, 4),
        dr_grpo_advantages(r, 4),
        rloo_advantages(r, 4),
        reinforce_pp_advantages(r),
        reinforce_pp_advantages(r, 2),
        remax_advantages(r, torch.full((2,), 0.1), 4),
        moving_average_advantages(r, 0.0, 0)[0],
    ):
        assert adv.dtype == torch.float32 and torch.equal(adv, torch.zeros(8))


def test_group_estimators_refuse_one_sample_and_ragged_batches():
    for fn in (grpo_advantages, dr_grpo_advantages, rloo_advantages):
        with pytest.raises(ValueError, match="k >= 2"):
            fn(torch.zeros(4), 1)
        with pytest.raises(ValueError, match="groups of k=3"):
            fn(torch.zeros(4), 3)
    with pytest.raises(ValueError, match="k >= 2"):
        reinforce_pp_advantages(torch.zeros(4), k=1)


def test_no_nan_for_a_single_reply_or_a_constant_group():
    one = torch.tensor([2.5])
    assert reinforce_pp_advantages(one).tolist() == [0.0]  # no spread: nothing to divide by
    assert whiten(one).tolist() == [0.0]
    mixed = torch.tensor([1.0, 1.0, 1.0, 0.0, 2.0, 4.0])  # one constant group, one not
    for adv in (grpo_advantages(mixed, 3), reinforce_pp_advantages(mixed, 3)):
        assert torch.isfinite(adv).all() and adv[:3].abs().max() == 0


# --- selection in rl train -------------------------------------------------------------------


def _cfg(baseline: str, k: int = 2, **kw) -> RLTrainConfig:
    return RLTrainConfig(
        baseline=baseline, num_generations=k, per_device_train_batch_size=2 * k, **kw
    )


@pytest.mark.parametrize("baseline", BASELINES)
def test_advantages_for_calls_the_estimator_it_names(baseline):
    shaped = torch.tensor([1.0, 4.0, 2.0, 2.5])
    greedy = torch.tensor([0.5, 3.0])
    expected = {
        "rloo": rloo_advantages(shaped, 2),
        "grpo": grpo_advantages(shaped, 2),
        "grpo_batch": grpo_batch_advantages(shaped, 2),
        "dr_grpo": dr_grpo_advantages(shaped, 2),
        "reinforce_pp": reinforce_pp_advantages(shaped),
        "reinforce_pp_baseline": reinforce_pp_advantages(shaped, 2),
        "remax": remax_advantages(shaped, greedy, 2),
        "moving_average": shaped - shaped.mean(),  # step 1: the batch's own mean
        "none": shaped,
    }[baseline]
    adv, base = advantages_for(_cfg(baseline), shaped, None, TrainState(), greedy=greedy)
    torch.testing.assert_close(adv, expected)
    assert math.isfinite(base)


def test_baseline_key_is_validated():
    with pytest.raises(ValueError, match=re.escape("baseline: rloo | grpo | grpo_batch | dr_")):
        _cfg("ppo")
    for name in ("rloo", "grpo", "grpo_batch", "dr_grpo", "reinforce_pp_baseline"):
        with pytest.raises(ValueError, match=f"baseline {name} needs num_generations >= 2"):
            RLTrainConfig(baseline=name, num_generations=1)
    for name in ("reinforce_pp", "remax", "moving_average", "none"):  # k = 1 is fine
        assert RLTrainConfig(baseline=name, num_generations=1).baseline == name
    with pytest.raises(ValueError, match="greedy"):
        advantages_for(_cfg("remax"), torch.zeros(4), None, TrainState())


def test_whitening_and_uncertainty_scaling_apply_after_any_estimator():
    shaped, std = torch.tensor([1.0, 4.0, 2.0, 2.5]), torch.tensor([0.0, 1.0, 3.0, 0.5])
    cfg = _cfg("dr_grpo", normalize_advantages=True, uncertainty_scaling=True)
    adv, _ = advantages_for(cfg, shaped, std, TrainState())
    # TRL's ε: (A − mean) / (std + 1e-4)
    torch.testing.assert_close(adv, whiten(dr_grpo_advantages(shaped, 2), 1e-4) / (1 + std))


def test_normalize_advantages_takes_every_process_s_statistics():
    """Two processes, each with two prompts of k = 2: each whitens its share with the statistics
    of the whole batch (TRL's normalize_advantages), so the shares join into the one-process
    result."""
    shaped = torch.tensor([1.0, 4.0, 2.0, 2.5, 0.0, 9.0, 3.0, 1.0])
    cfg = _cfg("dr_grpo", normalize_advantages=True)
    whole, _ = advantages_for(cfg, shaped, None, TrainState())
    everyone = dr_grpo_advantages(shaped, 2)
    shares = [advantages_for(cfg, part, None, TrainState(), gather=lambda a: everyone)[0]
              for part in shaped.split(4)]  # fmt: skip
    torch.testing.assert_close(torch.cat(shares), whole)
    alone = [advantages_for(cfg, part, None, TrainState())[0] for part in shaped.split(4)]
    assert not torch.allclose(torch.cat(alone), whole)  # whitening each share alone differs


def test_truncated_replies_keep_their_part_in_the_baseline_but_leave_the_loss():
    shaped = torch.tensor([1.0, 4.0, 2.0, 2.5])
    finished = [True, False, True, True]
    cfg = _cfg("rloo", mask_truncated_completions=True)
    adv, _ = advantages_for(cfg, shaped, None, TrainState(), finished=finished)
    kept, _ = advantages_for(_cfg("rloo"), shaped, None, TrainState())
    torch.testing.assert_close(adv, kept * torch.tensor([1.0, 0.0, 1.0, 1.0]))
    assert adv[0] == 1.0 - 4.0  # the cut reply is still the first one's leave-one-out baseline


@pytest.mark.parametrize("baseline", ["remax", "grpo"])
def test_rl_train_runs_with(baseline, tiny_model_dir, tmp_path):
    """The loop end to end; ReMax adds a greedy reply and its score per prompt per step."""
    import json

    from distalign.rl.train import run

    cfg = RLTrainConfig(
        model_name_or_path=str(tiny_model_dir), reward="tests.rl.test_train:reward_apple",
        baseline=baseline, num_generations=2, per_device_train_batch_size=4,
        gradient_accumulation_steps=1, max_completion_length=4, max_steps=2, max_eval_samples=2,
        eval_on_start=False, eval_steps=0, save_steps=0, use_peft=False, report_to="none",
        output_dir=str(tmp_path / "rl"),
    )  # fmt: skip
    run(cfg)
    lines = (tmp_path / "rl" / "metrics.jsonl").read_text().splitlines()
    steps = [m for m in map(json.loads, lines) if "train/baseline" in m]
    assert len(steps) == 2 and all(math.isfinite(m["train/advantage_std"]) for m in steps)


def test_replies_no_reward_scored_stay_out_of_the_baselines_as_trl_does():
    """NaN: a reply no reward source scored. Brute force against TRL's RLOO: the leave-one-out
    baseline averages the scored siblings only; an unscored reply, or a group's only scored
    one, gets advantage 0; the normalisation takes the others only."""
    from distalign.losses import group_advantages_where_scored

    nan = float("nan")
    shaped = torch.tensor([1.0, nan, 3.0, 6.0, nan, 2.0, nan, nan])  # k = 4: 2 prompts
    adv = group_advantages_where_scored(rloo_advantages, shaped, 4)
    # group 1: scored 1, 3, 6: 1 − (3 + 6)/2, 3 − (1 + 6)/2, 6 − (1 + 3)/2
    assert adv.tolist() == [-3.5, 0.0, -0.5, 4.0, 0.0, 0.0, 0.0, 0.0]
    cfg = _cfg("rloo", 4)
    full, _ = advantages_for(cfg, shaped, None, TrainState())
    assert full.tolist() == adv.tolist()
    normed, _ = advantages_for(_cfg("rloo", 4, normalize_advantages=True),
                               shaped, None, TrainState())  # fmt: skip
    kept = torch.tensor([-3.5, -0.5, 4.0], dtype=torch.float64)
    want = (kept - kept.mean()) / (kept.std() + 1e-4)
    torch.testing.assert_close(normed[[0, 2, 3]].double(), want, rtol=1e-5, atol=1e-6)
    assert normed[[1, 4, 5, 6, 7]].tolist() == [0.0] * 5
    # GRPO and Dr. GRPO over the scored replies of each group
    grpo, _ = advantages_for(_cfg("grpo", 4), shaped, None, TrainState())
    torch.testing.assert_close(grpo[[0, 2, 3]], grpo_advantages(shaped[[0, 2, 3]], 3))
    dr, _ = advantages_for(_cfg("dr_grpo", 4), shaped, None, TrainState())
    torch.testing.assert_close(dr[[0, 2, 3]], dr_grpo_advantages(shaped[[0, 2, 3]], 3))
    # the moving average: a baseline and an update from the scored rewards only
    state = TrainState()
    ma, base = advantages_for(_cfg("moving_average", 4), shaped, None, state)
    assert base == pytest.approx(3.0) and state.baseline_count == 4
    assert ma.tolist() == [-2.0, 0.0, 0.0, 3.0, 0.0, -1.0, 0.0, 0.0]
    with pytest.raises(ValueError, match="reinforce_pp_baseline needs every reply scored"):
        advantages_for(_cfg("reinforce_pp_baseline", 4), shaped, None,
                       TrainState())  # fmt: skip


def test_a_nan_the_kl_penalty_brings_is_a_fault_not_an_unscored_reply():
    rewards = torch.tensor([1.0, 2.0, 3.0, 5.0])
    shaped = torch.tensor([1.0, float("nan"), 3.0, 5.0])  # a log-prob gone wrong
    for name in ("rloo", "grpo", "reinforce_pp_baseline", "moving_average"):
        state = TrainState()
        adv, _ = advantages_for(_cfg(name, 2), shaped, None, state, rewards=rewards)
        assert adv.isnan().any(), name  # reaches the loss: the non-finite-step guard skips it
        assert not math.isnan(state.baseline_mean), name  # and never the moving average
    # ReMax: a group whose greedy reply no source scored has no baseline, and gets 0
    greedy = torch.tensor([float("nan"), 1.0])
    adv, base = advantages_for(_cfg("remax", 2), rewards, None, TrainState(), greedy=greedy)
    assert adv.tolist() == [0.0, 0.0, 2.0, 4.0] and base == 1.0


def test_completions_print_an_unscored_reward_as_a_dash(capsys):
    from distalign.printing import print_completions

    print_completions([{"prompt": "p", "reply": "r", "reward": None, "advantage": 0.0}], 1)
    assert "—" in capsys.readouterr().out
