"""REINFORCE pieces against brute force (no model)."""

from __future__ import annotations

import pytest
import torch

from distalign.losses import (
    clipped_policy_loss,
    high_entropy_mask,
    kl_estimates,
    kl_loss,
    kl_shaped_rewards,
    moving_average_update,
    reinforce_loss,
    rloo_advantages,
    whiten,
)


def test_rloo_equals_leave_one_out_by_brute_force():
    torch.manual_seed(0)
    for k in (2, 3, 5):
        r = torch.randn(4 * k, dtype=torch.float64)
        got = rloo_advantages(r, k)
        for i in range(4 * k):
            g = i // k
            others = [r[j] for j in range(g * k, g * k + k) if j != i]
            assert got[i].item() == pytest.approx((r[i] - sum(others) / (k - 1)).item())
        # closed form k/(k−1)(R − mean); advantages of a prompt sum to zero
        grouped = r.view(-1, k)
        torch.testing.assert_close(
            got.view(-1, k), k / (k - 1) * (grouped - grouped.mean(1, keepdim=True))
        )
    with pytest.raises(ValueError):
        rloo_advantages(torch.zeros(4), 1)


def test_moving_average_is_the_mean_of_all_past_rewards():
    torch.manual_seed(1)
    batches = [torch.randn(n) for n in (3, 5, 2, 4)]
    mean, count = 0.0, 0
    seen = []
    for b in batches:
        mean, count = moving_average_update(mean, count, b)
        seen += b.tolist()
        assert mean == pytest.approx(sum(seen) / len(seen))
        assert count == len(seen)


def test_ema_baseline():
    mean, count = moving_average_update(0.0, 0, torch.tensor([2.0, 4.0]), ema=0.9)
    assert mean == 3.0
    mean, _ = moving_average_update(mean, count, torch.tensor([5.0]), ema=0.9)
    assert mean == pytest.approx(0.9 * 3 + 0.1 * 5)


def test_kl_estimators_by_brute_force():
    torch.manual_seed(2)
    lp, ref = torch.randn(3, 6, dtype=torch.float64), torch.randn(3, 6, dtype=torch.float64)
    mask = torch.tensor(
        [[1, 1, 1, 0, 0, 0], [1, 1, 1, 1, 1, 1], [1, 0, 0, 0, 0, 0]], dtype=torch.float64
    )
    est = kl_estimates(lp, ref, mask)
    for i in range(3):
        k1 = sum((lp[i, t] - ref[i, t]).item() for t in range(6) if mask[i, t])
        k3 = sum(
            (torch.exp(ref[i, t] - lp[i, t]) - 1 - (ref[i, t] - lp[i, t])).item()
            for t in range(6)
            if mask[i, t]
        )
        assert est["k1"][i].item() == pytest.approx(k1)
        assert est["k3"][i].item() == pytest.approx(k3)
    assert (est["k3"] >= 0).all()
    shaped = kl_shaped_rewards(
        torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64), lp, ref, mask, beta=0.1
    )
    torch.testing.assert_close(
        shaped, torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64) - 0.1 * est["k1"]
    )


def test_kl_loss_by_brute_force_and_its_expected_gradient():
    """Its value is the replies' k3 weighted and averaged; over a whole small vocabulary, the
    mean of its gradient under π is the gradient of KL(π_ref‖π) (as TRL GRPO's term's is),
    and its expected value is KL(π‖π_ref)."""
    torch.manual_seed(3)
    lp, ref = torch.randn(3, 5, dtype=torch.float64), torch.randn(3, 5, dtype=torch.float64)
    mask = torch.tensor([[1, 1, 0, 0, 0], [1, 1, 1, 1, 1], [0, 0, 0, 0, 0]], dtype=torch.float64)
    w = torch.tensor([0.5, 2.0, 1.0], dtype=torch.float64)
    k3 = kl_estimates(lp, ref, mask)["k3"]
    assert kl_loss(lp, ref, mask, w).item() == pytest.approx((w * k3).mean().item())
    # one token position, a vocabulary of 6: the expectation over y ~ π, exactly
    logits = torch.randn(6, dtype=torch.float64, requires_grad=True)
    ref_logp = torch.log_softmax(torch.randn(6, dtype=torch.float64), -1)
    logp = torch.log_softmax(logits, -1)
    p = logp.exp().detach()
    each = [kl_loss(logp[y].view(1, 1), ref_logp[y].view(1, 1), torch.ones(1, 1),
                    torch.ones(1, dtype=torch.float64)) for y in range(6)]  # fmt: skip
    expected = sum(p[y] * each[y] for y in range(6))
    assert expected.item() == pytest.approx((p * (logp.detach() - ref_logp)).sum().item())
    (grad,) = torch.autograd.grad(expected, logits)
    forward_kl = (ref_logp.exp() * (ref_logp - torch.log_softmax(logits, -1))).sum()
    (want,) = torch.autograd.grad(forward_kl, logits)
    torch.testing.assert_close(grad, want)
    # with the ratio to the sampling policy (TRL GRPO's use_bias_correction_kl), at the first
    # update (the policy is the sampler): the same value, the reverse KL's gradient
    logp = torch.log_softmax(logits, -1)
    corrected = sum(
        p[y] * kl_loss(logp[y].view(1, 1), ref_logp[y].view(1, 1), torch.ones(1, 1),
                       torch.ones(1, dtype=torch.float64), logp[y].detach().view(1, 1))
        for y in range(6)
    )  # fmt: skip
    assert corrected.item() == pytest.approx(expected.item())
    (corrected_grad,) = torch.autograd.grad(corrected, logits)
    logp = torch.log_softmax(logits, -1)
    reverse_kl = (logp.exp() * (logp - ref_logp)).sum()
    (reverse,) = torch.autograd.grad(reverse_kl, logits)
    torch.testing.assert_close(corrected_grad, reverse)
    assert not torch.allclose(reverse, want)  # the two KLs' gradients differ here
    # a reply's geometric-mean ratio (GSPO's level) weighs all its tokens alike
    lp2 = torch.tensor([[-1.0, -2.0]], dtype=torch.float64)
    old2 = torch.tensor([[-1.5, -1.0]], dtype=torch.float64)
    ones = torch.ones(1, 2, dtype=torch.float64)
    k3_2 = kl_estimates(lp2, ref[:1, :2], ones)["k3"]
    seq = kl_loss(lp2, ref[:1, :2], ones, torch.ones(1, dtype=torch.float64), old2, "sequence")
    assert seq.item() == pytest.approx((k3_2 * torch.exp((lp2 - old2).mean())).item())


def test_kl_of_identical_policies_is_zero():
    lp = torch.randn(2, 4)
    est = kl_estimates(lp, lp.clone(), torch.ones(2, 4))
    assert torch.allclose(est["k1"], torch.zeros(2)) and torch.allclose(est["k3"], torch.zeros(2))


def test_reinforce_loss_and_its_gradient():
    lp = torch.tensor([[-1.0, -2.0, -9.0], [-0.5, -0.5, -0.5]], requires_grad=True)
    mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 1.0, 1.0]])
    adv = torch.tensor([2.0, -1.0], requires_grad=True)
    loss = reinforce_loss(lp, mask, adv)
    assert loss.item() == pytest.approx(-(2.0 * -3.0 + -1.0 * -1.5) / 2)
    loss.backward()
    # d/d logp_t = −A_i · mask / B; advantages get no gradient (detached)
    torch.testing.assert_close(lp.grad, -torch.tensor([[1.0, 1.0, 0.0], [-0.5, -0.5, -0.5]]))
    assert adv.grad is None


def test_whiten():
    x = torch.tensor([1.0, 2.0, 3.0, 4.0])
    w = whiten(x)
    assert w.mean().abs() < 1e-6 and (w.std() - 1).abs() < 1e-4
    assert torch.equal(whiten(torch.ones(3)), torch.zeros(3))


def test_rollout_groups_clamp_to_the_last_prompt():
    from distalign.rl.rollouts import Rollouts

    ro = Rollouts(["a", "b", "c"], [[1], [2], [3]], [[5], [6], [7]], [[-1.0], [-1.0], [-1.0]],
                  [True] * 3, ["x"] * 3, k=1, device="cpu")  # fmt: skip
    ids, groups = ro.groups(2, 4)  # a micro-batch that runs past the end
    assert ids == [[3]] and groups == [[[7]]]


def test_rollout_groups_of_a_reply_range_cut_prompt_groups():
    from distalign.rl.rollouts import Rollouts

    replies = [[10], [11], [12], [20], [21], [22]]  # two prompts, k = 3
    ro = Rollouts(["a", "b"], [[1], [2]], replies, [[-1.0]] * 6, [True] * 6, ["x"] * 6,
                  k=3, device="cpu")  # fmt: skip
    assert ro.groups(0, 2) == ([[1]], [[[10], [11]]])
    assert ro.groups(2, 4) == ([[1], [2]], [[[12]], [[20]]])
    assert ro.groups(4, 6) == ([[2]], [[[21], [22]]])
    assert ro.groups(0, 6) == ([[1], [2]], [replies[:3], replies[3:]])


def test_clipped_policy_loss_at_ratio_one_is_reinforce_and_clips_as_ppo():
    lp = torch.tensor([[-1.0, -2.0, -9.0], [-0.5, -0.5, -0.5]], requires_grad=True)
    mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 1.0, 1.0]])
    adv = torch.tensor([2.0, -1.0])
    old = torch.tensor([-3.0, -1.5])  # the same policy: ratio 1
    loss, clipped = clipped_policy_loss(lp, mask, old, adv)
    loss.backward()
    grad = lp.grad.clone()
    lp.grad = None
    reinforce_loss(lp, mask, adv).backward()
    torch.testing.assert_close(grad, lp.grad)  # the first update is the REINFORCE step
    assert not clipped.any()

    # brute force, one reply at a time: ρ = exp(Σ log π − old)
    for a in (1.5, -1.5):
        for shift in (-0.5, -0.1, 0.0, 0.1, 0.5):
            x = torch.tensor([[-1.0 + shift, -2.0]], requires_grad=True)
            m = torch.ones(1, 2)
            loss, clipped = clipped_policy_loss(x, m, torch.tensor([-3.0]), torch.tensor([a]),
                                                epsilon_low=0.2, epsilon_high=0.28)  # fmt: skip
            rho = torch.exp(torch.tensor(shift))
            expect = -min(rho * a, rho.clamp(0.8, 1.28) * a)
            assert loss.item() == pytest.approx(float(expect), rel=1e-6)
            loss.backward()
            out_of_band = (a > 0 and rho > 1.28) or (a < 0 and rho < 0.8)
            assert bool(clipped[0]) == out_of_band
            # clipped: no gradient; else d/dx of −ρ·A is −ρ·A per token
            want = 0.0 if out_of_band else float(-rho * a)
            torch.testing.assert_close(x.grad, torch.full((1, 2), want), rtol=1e-5, atol=1e-7)


def test_clipped_policy_loss_survives_a_reply_whose_ratio_overflows_float32():
    # 200 tokens that each moved up 0.5 nats: log ρ = 100, past float32's exp (88.7)
    moved = torch.full((1, 200), -1.0)
    lp = torch.cat([moved, torch.full((2, 200), -1.5)]).requires_grad_(True)
    mask = torch.ones(3, 200)
    old = torch.tensor([-300.0, -300.0, -300.0])  # reply 0 at -1.5 a token before
    for adv in ([1.0, 1.0, -1.0], [-1.0, 1.0, 1.0]):
        lp.grad = None
        loss, clipped = clipped_policy_loss(lp, mask, old, torch.tensor(adv))
        loss.backward()
        assert torch.isfinite(loss) and torch.isfinite(lp.grad).all()
        assert clipped.tolist() == [True, False, False]
        assert (lp.grad[0] == 0).all()  # the runaway reply gives no gradient
        # the others' gradient is the plain REINFORCE one (ratio 1): −A/B per token
        want = torch.tensor(adv[1:]).neg().div(3).unsqueeze(1).expand(2, 200)
        torch.testing.assert_close(lp.grad[1:], want)


def _trl_token_loss(lp, mask, adv, loss_type, max_len):
    """TRL GRPO's loss at ratio 1, written out per token: −A_i·log π(y_i,t) aggregated as its
    loss_type says."""
    return _trl_aggregate(-adv[:, None] * lp * mask, mask, loss_type, max_len)


def _trl_aggregate(per_token, mask, loss_type, max_len):
    """TRL GRPO's reduction of a (B, T) per-token loss by loss_type (``sequence``: summed
    per reply, then averaged: REINFORCE's, TRL RLOO's)."""
    if loss_type == "grpo":
        return (per_token.sum(-1) / mask.sum(-1).clamp(min=1)).mean()
    if loss_type in ("dapo", "bnpo"):
        return per_token.sum() / mask.sum().clamp(min=1)
    if loss_type == "dr_grpo":
        return per_token.sum() / (per_token.shape[0] * max_len)
    return per_token.sum(-1).mean()


@pytest.mark.parametrize("loss_type", ["sequence", "grpo", "dr_grpo", "dapo", "bnpo"])
def test_loss_types_weight_each_reply_as_trl_grpo_aggregates_its_tokens(loss_type):
    """The sequence-level loss with each reply's advantage times loss_type_weights is TRL's
    token-level loss of that loss_type, value and gradient; the clipped loss scales alike and
    clips the same replies."""
    from distalign.losses import loss_type_weights

    torch.manual_seed(1)
    lengths = torch.tensor([1, 7, 3, 12, 5])
    mask = (torch.arange(12)[None, :] < lengths[:, None]).double()
    lp = (-torch.rand(5, 12, dtype=torch.float64) * 3).requires_grad_()
    adv = torch.randn(5, dtype=torch.float64)
    c = loss_type_weights(lengths, loss_type, max_completion_length=16).double()
    ours = reinforce_loss(lp, mask, adv * c)
    theirs = _trl_token_loss(lp, mask, adv, loss_type, 16)
    assert ours.item() == pytest.approx(theirs.item())
    (g1,) = torch.autograd.grad(ours, lp)
    (g2,) = torch.autograd.grad(theirs, lp)
    torch.testing.assert_close(g1, g2)
    old = (lp.detach() * mask).sum(-1) + torch.tensor([0.5, -0.4, 0.05, 0.3, -0.01]).double()
    plain, clip_plain = clipped_policy_loss(lp, mask, old, adv)
    weighted, clip_weighted = clipped_policy_loss(lp, mask, old, adv * c)
    assert torch.equal(clip_plain, clip_weighted)  # c > 0: the same replies clipped
    if loss_type == "sequence":
        assert weighted.item() == pytest.approx(plain.item())


def test_dapo_weights_count_the_tokens_they_are_given():
    from distalign.losses import loss_type_weights

    lengths = torch.tensor([2, 6])
    assert loss_type_weights(lengths, "dapo", 8).tolist() == [0.25, 0.25]  # 2 replies, 8 tokens
    # over every process: 5 replies and 40 tokens in all
    assert loss_type_weights(lengths, "dapo", 8, batch_tokens=40, batch_replies=5).tolist() == [
        0.125, 0.125]  # fmt: skip
    with pytest.raises(ValueError, match="loss_type must be one of"):
        loss_type_weights(lengths, "token", 8)


def _trl_clipped_loss(lp, mask, old, adv, loss_type, level, max_len, eps=(0.2, 0.28), delta=None,
                      entropy_mask=None):  # fmt: skip
    """TRL GRPO's clipped loss written out as its trainer computes it: the ratio per token or
    the reply's mean log-ratio (``sequence``) broadcast over its tokens, clipped, capped at
    delta, then aggregated over tokens as loss_type says (``_trl_token_loss``)."""
    log_ratio = lp - old
    if level == "sequence":
        log_ratio = ((log_ratio * mask).sum(-1) / mask.sum(-1).clamp(min=1))[:, None]
    coef_1 = torch.exp(log_ratio)
    coef_2 = coef_1.clamp(1 - eps[0], 1 + eps[1])
    if delta is not None:
        coef_1 = coef_1.clamp(max=delta)
    per_token = -torch.min(coef_1 * adv[:, None], coef_2 * adv[:, None]).expand_as(lp) * mask
    if entropy_mask is not None:
        per_token = per_token * entropy_mask
    return _trl_aggregate(per_token, mask, loss_type, max_len)


@pytest.mark.parametrize("level", ["token", "sequence"])
@pytest.mark.parametrize("loss_type", ["sequence", "grpo", "dr_grpo", "dapo"])
@pytest.mark.parametrize("delta", [None, 1.5])
def test_token_and_sequence_ratios_are_trl_grpo_s_clipped_loss(level, loss_type, delta):
    """Away from ratio 1, with tokens and replies on both sides of the clip band and some
    ratios above delta: the clipped loss at ``level``, each reply's advantage times its
    loss_type factor, is TRL GRPO's, in value and gradient."""
    from distalign.losses import loss_type_weights

    torch.manual_seed(3)
    lengths = torch.tensor([2, 9, 4, 12, 6, 1])
    mask = (torch.arange(12)[None, :] < lengths[:, None]).double()
    lp = (-torch.rand(6, 12, dtype=torch.float64) * 3).requires_grad_()
    old = (lp.detach() + torch.randn(6, 12, dtype=torch.float64) * 0.6) * mask
    adv = torch.tensor([1.0, -0.7, 0.4, -1.2, 2.0, -0.3], dtype=torch.float64)
    c = loss_type_weights(lengths, loss_type, max_completion_length=16).double()
    ours, share = clipped_policy_loss(lp, mask, old, adv * c, 0.2, 0.28, level, delta)
    theirs = _trl_clipped_loss(lp, mask, old, adv, loss_type, level, 16, delta=delta)
    assert ours.item() == pytest.approx(theirs.item(), rel=1e-6)  # c in float32
    (g1,) = torch.autograd.grad(ours, lp)
    (g2,) = torch.autograd.grad(theirs, lp)
    torch.testing.assert_close(g1, g2)
    assert share.shape == (6,) and 0 < share.mean() < 1  # some clipped, not all
    if level == "token":  # the share of each reply's tokens, by brute force
        rho = torch.exp(lp.detach() - old)
        out = ((rho > 1.28) & (adv[:, None] > 0)) | ((rho < 0.8) & (adv[:, None] < 0))
        want = (out.double() * mask).sum(-1) / lengths
        torch.testing.assert_close(share, want.to(share.dtype))


def test_every_level_s_first_update_is_reinforce():
    """At ratio 1 the three levels' gradients are REINFORCE's; the levels are checked."""
    lp = torch.tensor([[-1.0, -2.0, -9.0], [-0.5, -0.5, -0.5]], requires_grad=True)
    mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 1.0, 1.0]])
    adv = torch.tensor([2.0, -1.0])
    (want,) = torch.autograd.grad(reinforce_loss(lp, mask, adv), lp)
    for level in ("reply", "token", "sequence"):
        loss, share = clipped_policy_loss(lp, mask, lp.detach() * mask, adv, level=level)
        (grad,) = torch.autograd.grad(loss, lp)
        torch.testing.assert_close(grad, want)
        assert not share.any()
    # GSPO: an empty reply has no tokens to count its term over, as in TRL
    empty = torch.tensor([[1.0, 1.0, 0.0], [0.0, 0.0, 0.0]])
    loss, _ = clipped_policy_loss(lp, empty, lp.detach() * empty, torch.tensor([0.0, 1.0]),
                                  level="sequence")  # fmt: skip
    assert loss.item() == 0.0
    with pytest.raises(ValueError, match="level must be one of"):
        clipped_policy_loss(lp, mask, lp.detach(), adv, level="tokens")


def test_high_entropy_mask_keeps_the_top_quantile_of_reply_tokens():
    ent = torch.tensor([[0.1, 0.9, 0.5, 7.0], [0.3, 0.8, 0.2, 0.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0, 0.0], [1.0, 1.0, 1.0, 1.0]])
    # the 7 valid entropies 0.0 .. 0.9; keep the top half: at least their 0.5 quantile, 0.3
    keep = high_entropy_mask(ent, mask, 0.5)
    assert keep.tolist() == [[False, True, True, False], [True, True, False, False]]
    assert high_entropy_mask(ent, mask, 1.0).tolist() == mask.bool().tolist()
    # over every process's tokens: another process's high entropies raise the threshold
    assert not high_entropy_mask(ent, mask, 0.5, everyone=torch.full((20,), 5.0)).any()


@pytest.mark.parametrize("level", ["token", "sequence"])
def test_kept_tokens_mask_the_clipped_loss_as_trl_grpo_s_entropy_mask(level):
    torch.manual_seed(4)
    lengths = torch.tensor([3, 8, 5, 1])
    mask = (torch.arange(8)[None, :] < lengths[:, None]).double()
    lp = (-torch.rand(4, 8, dtype=torch.float64) * 3).requires_grad_()
    old = (lp.detach() + torch.randn(4, 8, dtype=torch.float64) * 0.5) * mask
    adv = torch.tensor([1.0, -0.5, 0.7, -1.1], dtype=torch.float64)
    keep = high_entropy_mask(torch.rand(4, 8), mask, 0.4).double()
    ours, _ = clipped_policy_loss(lp, mask, old, adv, 0.2, 0.28, level, keep=keep)
    theirs = _trl_clipped_loss(lp, mask, old, adv, "sequence", level, 8, entropy_mask=keep)
    assert ours.item() == pytest.approx(theirs.item(), rel=1e-9)
    (g1,) = torch.autograd.grad(ours, lp)
    (g2,) = torch.autograd.grad(theirs, lp)
    torch.testing.assert_close(g1, g2)
    # at ratio 1 (the first update's loss): TRL's gradient too, a sequence-level reply's
    # counted over its kept tokens while every token of it moves
    ours, _ = clipped_policy_loss(lp, mask, lp.detach() * mask, adv, level=level, keep=keep)
    theirs = _trl_clipped_loss(lp, mask, lp.detach() * mask, adv, "sequence", level, 8,
                               entropy_mask=keep)  # fmt: skip
    (g1,) = torch.autograd.grad(ours, lp)
    (g2,) = torch.autograd.grad(theirs, lp)
    torch.testing.assert_close(g1, g2)
    with pytest.raises(ValueError, match="reply-level ratio has no per-token terms"):
        clipped_policy_loss(lp, mask, old, adv, level="reply", keep=keep)


def _trl_log_ratio(lp, old, mask, level):
    """TRL GRPO's log importance weights: per token, or the reply's mean (B, 1)."""
    log_ratio = lp - old
    if level == "sequence":
        log_ratio = ((log_ratio * mask).sum(-1) / mask.sum(-1).clamp(min=1))[:, None]
    return log_ratio


def _off_policy_batch(seed=5):
    """Six replies of 1–12 tokens, current and sampling log-probs apart by ~0.6 per token, and
    advantages of both signs."""
    torch.manual_seed(seed)
    lengths = torch.tensor([2, 9, 4, 12, 6, 1])
    mask = (torch.arange(12)[None, :] < lengths[:, None]).double()
    lp = (-torch.rand(6, 12, dtype=torch.float64) * 3).requires_grad_()
    old = (lp.detach() + torch.randn(6, 12, dtype=torch.float64) * 0.6) * mask
    adv = torch.tensor([1.0, -0.7, 0.4, -1.2, 2.0, -0.3], dtype=torch.float64)
    return lengths, mask, lp, old, adv


def _same_value_and_gradient(ours, theirs, lp):
    assert ours.item() == pytest.approx(theirs.item(), rel=1e-6)
    (g1,) = torch.autograd.grad(ours, lp, retain_graph=True)
    (g2,) = torch.autograd.grad(theirs, lp, retain_graph=True)
    torch.testing.assert_close(g1, g2)


@pytest.mark.parametrize("level", ["token", "sequence"])
@pytest.mark.parametrize("entropy", [False, True])
def test_cispo_is_trl_grpo_s_cispo_loss(level, entropy):
    """CISPO with each reply's advantage times its dapo factor is TRL's cispo loss, value and
    gradient, at ratios on both sides of ε_max; the capped share as TRL's cispo_clip_ratio."""
    from distalign.losses import cispo_loss, loss_type_weights

    lengths, mask, lp, old, adv = _off_policy_batch()
    keep = high_entropy_mask(torch.rand(6, 12), mask, 0.5).double() if entropy else None
    c = loss_type_weights(lengths, "cispo", max_completion_length=16).double()
    assert torch.equal(c, loss_type_weights(lengths, "dapo", 16).double())
    eps_max = 1.1
    ours, capped = cispo_loss(lp, mask, old, adv * c, eps_max, level, keep)
    coef = torch.exp(_trl_log_ratio(lp, old, mask, level))
    per_token = -coef.clamp(max=eps_max).detach() * adv[:, None] * lp * mask
    if keep is not None:
        per_token = per_token * keep
    _same_value_and_gradient(ours, _trl_aggregate(per_token, mask, "dapo", 16), lp)
    flags = ((coef > eps_max) & (adv[:, None] > 0)).double().expand_as(lp)
    want = (flags * mask).sum(-1) / lengths
    torch.testing.assert_close(capped, want.to(capped.dtype))
    assert 0 < capped.mean() < 1


def test_cispo_damps_a_token_far_off_policy_where_ppo_drops_it():
    """One token of ratio e² with a positive advantage: PPO's clip leaves it no gradient,
    CISPO's gradient is ε_max·A; at ratio 1 CISPO is REINFORCE scaled by min(1, ε_max), and a
    reply-level ratio weighs every token of the reply alike."""
    from distalign.losses import cispo_loss

    lp = torch.tensor([[-1.0, -2.0]], requires_grad=True)
    mask = torch.ones(1, 2)
    old = torch.tensor([[-3.0, -2.0]])  # token 0: ratio e^2; token 1: ratio 1
    adv = torch.tensor([1.5])
    ppo, _ = clipped_policy_loss(lp, mask, old, adv, 0.2, 0.28, "token")
    (g_ppo,) = torch.autograd.grad(ppo, lp)
    assert g_ppo[0, 0] == 0 and g_ppo[0, 1] == pytest.approx(-1.5)
    loss, capped = cispo_loss(lp, mask, old, adv, epsilon_max=5.0)
    (g,) = torch.autograd.grad(loss, lp)
    assert g[0].tolist() == pytest.approx([-1.5 * 5.0, -1.5])
    assert capped.tolist() == [0.5]  # e^2 > 5: one token of two
    (want,) = torch.autograd.grad(reinforce_loss(lp, mask, adv), lp)
    for eps_max, scale in ((5.0, 1.0), (0.2, 0.2)):
        loss, _ = cispo_loss(lp, mask, lp.detach(), adv, eps_max)
        (g,) = torch.autograd.grad(loss, lp)
        torch.testing.assert_close(g, want * scale)
    loss, capped = cispo_loss(lp, mask, old, adv, 10.0, level="reply")  # ratio e^2 < 10
    (g,) = torch.autograd.grad(loss, lp)
    torch.testing.assert_close(g, want * torch.exp(torch.tensor(2.0)))
    assert capped.tolist() == [0.0]


@pytest.mark.parametrize("level", ["token", "sequence"])
def test_sapo_is_trl_grpo_s_sapo_loss(level):
    from distalign.losses import loss_type_weights, sapo_loss

    lengths, mask, lp, old, adv = _off_policy_batch(6)
    c = loss_type_weights(lengths, "sapo", max_completion_length=16).double()
    assert torch.equal(c, loss_type_weights(lengths, "grpo", 16).double())
    ours = sapo_loss(lp, mask, old, adv * c, 1.0, 1.05, level)
    coef = torch.exp(_trl_log_ratio(lp, old, mask, level))
    tau = torch.where(adv[:, None] > 0, 1.0, 1.05).double()
    per_token = -(torch.sigmoid(tau * (coef - 1)) * 4 / tau * adv[:, None]).expand_as(lp) * mask
    _same_value_and_gradient(ours, _trl_aggregate(per_token, mask, "grpo", 16), lp)


def test_sapo_gate_is_reinforce_on_policy_and_fades_off_it():
    """Per token, d loss / d log π = −4 σ'(τ(ρ − 1)) ρ A: A at ρ = 1 (every level), none to
    speak of far from 1, where PPO's gradient is all or nothing."""
    from distalign.losses import sapo_loss

    lp = torch.tensor([[-1.0, -1.0, -1.0, -1.0]], requires_grad=True)
    mask = torch.ones(1, 4)
    adv = torch.tensor([2.0])
    (want,) = torch.autograd.grad(reinforce_loss(lp, mask, adv), lp)
    for level in ("reply", "token", "sequence"):
        (g,) = torch.autograd.grad(sapo_loss(lp, mask, lp.detach(), adv, level=level), lp)
        torch.testing.assert_close(g, want)
    shifts = torch.tensor([[0.0, 0.3, 1.0, 3.0]])  # log ρ per token
    (g,) = torch.autograd.grad(sapo_loss(lp, mask, lp.detach() - shifts, adv, 1.0), lp)
    rho = torch.exp(shifts)
    sig = torch.sigmoid(rho - 1)
    torch.testing.assert_close(g, -4 * sig * (1 - sig) * rho * 2.0)
    assert g[0, 3].abs() < 1e-6  # ρ = e³
    with pytest.raises(ValueError, match="reply-level ratio has no per-token terms"):
        sapo_loss(lp, mask, lp.detach(), adv, level="reply", keep=mask)


def _trl_vespo_phi(lp, old, mask, adv, k_pos=2.0, lam_pos=3.0, k_neg=3.0, lam_neg=2.0):
    """TRL GRPO's get_gamma_weights written out (no vLLM correction), (B, 1)."""
    low = torch.log(torch.tensor(1e-8)).item()
    seq = ((lp - old).clamp(-20, 20) * mask).sum(-1, keepdim=True)
    log_w = seq.clamp(low, 20.0)
    nonneg = adv[:, None] >= 0
    k = torch.where(nonneg, k_pos, k_neg)
    lam = torch.where(nonneg, lam_pos, lam_neg).clamp(min=1e-4)
    return torch.exp(lam + k * log_w - lam * torch.exp(log_w)).detach()


def test_vespo_is_trl_grpo_s_vespo_loss():
    from distalign.losses import loss_type_weights, vespo_loss, vespo_weights

    lengths, mask, lp, old, adv = _off_policy_batch(7)
    c = loss_type_weights(lengths, "vespo", max_completion_length=16).double()
    ours = vespo_loss(lp, mask, old, adv * c)
    phi = _trl_vespo_phi(lp.detach(), old, mask, adv)
    per_token = -phi * adv[:, None] * lp * mask
    _same_value_and_gradient(ours, _trl_aggregate(per_token, mask, "dapo", 16), lp)
    weights = vespo_weights(lp.detach() - old, mask, adv)
    assert weights.min() < 0.5 and weights.max() > 0.5  # some replies far from 1
    # φ(1) = 1: on-policy, REINFORCE; far off-policy on either side, almost nothing
    on = vespo_weights(torch.zeros(2, 3), torch.ones(2, 3), torch.tensor([1.0, -1.0]))
    torch.testing.assert_close(on, torch.ones(2))
    far = vespo_weights(torch.tensor([[4.0], [-6.0]]), torch.ones(2, 1), torch.ones(2))
    assert (far < 1e-3).all()
    (want,) = torch.autograd.grad(reinforce_loss(lp, mask, adv), lp)
    (g,) = torch.autograd.grad(vespo_loss(lp, mask, lp.detach() * mask, adv), lp)
    torch.testing.assert_close(g, want)


def test_luspo_is_gspo_summed_over_each_reply_s_tokens():
    """TRL's luspo: the clipped loss at the sequence level, each reply's per-token terms summed
    and the sums averaged, which is the clipped loss with sequence's factor (1)."""
    from distalign.losses import loss_type_objective, loss_type_weights

    lengths, mask, lp, old, adv = _off_policy_batch(8)
    c = loss_type_weights(lengths, "luspo", max_completion_length=16)
    assert c.tolist() == [1.0] * 6 and loss_type_objective("luspo") == "clip"
    ours, _ = clipped_policy_loss(lp, mask, old, adv * c.double(), 0.2, 0.28, "sequence")
    theirs = _trl_clipped_loss(lp, mask, old, adv, "sequence", "sequence", 16)
    _same_value_and_gradient(ours, theirs, lp)


def test_off_policy_mask_is_trl_grpo_s():
    """A reply is left out where its advantage is negative and its mean per-token drift
    log π_old − log π exceeds the threshold, as TRL's get_off_policy_mask (written out)."""
    from distalign.losses import off_policy_mask

    _, mask, lp, _, adv = _off_policy_batch(9)
    drift = torch.tensor([0.9, 0.9, 0.1, 0.9, 0.9, 0.0], dtype=torch.float64)
    old = (lp.detach() + drift[:, None]) * mask  # each token's drift, the reply's mean too
    ours = off_policy_mask(lp, old, mask, adv, 0.5)
    kl = ((old - lp.detach()) * mask).sum(1, keepdim=True) / mask.sum(1, keepdim=True)
    theirs = ((adv[:, None] >= 0) | (kl <= 0.5)).double()[:, 0]
    torch.testing.assert_close(ours, theirs)
    # advantages [1, -0.7, 0.4, -1.2, 2, -0.3]: the drifted negative ones go
    assert ours.tolist() == [1.0, 0.0, 1.0, 0.0, 1.0, 1.0]
    assert off_policy_mask(lp, lp.detach(), mask, adv, 0.0).tolist() == [1.0] * 6
