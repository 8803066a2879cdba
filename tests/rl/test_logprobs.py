"""Teacher-forced log-probs: equal to sampling's, exact under prefix sharing over k samples."""

from __future__ import annotations

import pytest
import torch

from distalign.losses import reinforce_loss
from distalign.models.generate import SamplingConfig, sample_replies
from distalign.models.lora import add_lora
from distalign.rl.logprobs import (
    ReplyLogprobs,
    gather_logprobs,
    pad_reply_tensors,
    reference_mode,
    reply_logprobs,
)

PROMPTS = [
    [{"role": "user", "content": "Say something nice."}],
    [{"role": "user", "content": "A longer prompt about rivers, mountains and the sea, please."}],
]


def _samples(model, tokenizer, k=3):
    cfg = SamplingConfig(max_completion_length=12, temperature=1.0, seed=5)
    return sample_replies(model, tokenizer, PROMPTS, k=k, config=cfg)


def test_gather_matches_full_log_softmax():
    torch.manual_seed(0)
    head = torch.nn.Linear(8, 50, bias=False)
    h, tokens = torch.randn(37, 8), torch.randint(0, 50, (37,))
    logp, ent = gather_logprobs(h, head, tokens, temperature=0.7, chunk=5)
    full = torch.log_softmax(head(h) / 0.7, -1)
    torch.testing.assert_close(logp, full.gather(-1, tokens[:, None]).squeeze(-1))
    torch.testing.assert_close(ent, -(full.exp() * full).sum(-1))


def test_teacher_forced_equals_sampling_logprobs(tiny_policy):
    model, tokenizer = tiny_policy
    s = _samples(model, tokenizer)
    groups = [s.reply_ids[i * 3 : i * 3 + 3] for i in range(2)]
    with torch.no_grad():
        logps, _ = reply_logprobs(model, s.prompt_ids, groups, tokenizer.pad_token_id)
    for got, sampled in zip(logps, s.logprobs, strict=True):
        torch.testing.assert_close(got, torch.tensor(sampled), atol=1e-4, rtol=0)


def test_prefix_sharing_over_k_samples_is_exact(tiny_policy):
    model, tokenizer = tiny_policy
    s = _samples(model, tokenizer, k=4)
    groups = [s.reply_ids[i * 4 : i * 4 + 4] for i in range(2)]
    adv = torch.randn(8)

    def loss_and_grads(sharing):
        model.zero_grad()
        logps, _ = reply_logprobs(
            model, s.prompt_ids, groups, tokenizer.pad_token_id, prefix_sharing=sharing
        )
        lp, mask = pad_reply_tensors(logps)
        loss = reinforce_loss(lp, mask, adv)
        loss.backward()
        return loss.detach(), {
            n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None
        }

    l1, g1 = loss_and_grads(True)
    l2, g2 = loss_and_grads(False)
    torch.testing.assert_close(l1, l2, atol=1e-4, rtol=0)
    for name in g1:
        torch.testing.assert_close(g1[name], g2[name], atol=1e-4, rtol=1e-4, msg=name)


def _groups(s, k):
    return [s.reply_ids[i * k : i * k + k] for i in range(len(PROMPTS))]


def test_eager_attention_gives_the_same_logprobs(tiny_policy):
    # eager adds the (converted) block mask to the scores; sdpa takes the boolean one
    model, tokenizer = tiny_policy
    s = _samples(model, tokenizer)
    with torch.no_grad():
        sdpa, _ = reply_logprobs(model, s.prompt_ids, _groups(s, 3), tokenizer.pad_token_id)
        model.set_attn_implementation("eager")
        eager, _ = reply_logprobs(model, s.prompt_ids, _groups(s, 3), tokenizer.pad_token_id)
    for a, b in zip(eager, sdpa, strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=0)


def test_lora_reference_is_the_policy_with_adapters_off(tiny_policy):
    model, tokenizer = tiny_policy
    s = _samples(model, tokenizer)
    args = (s.prompt_ids, _groups(s, 3), tokenizer.pad_token_id)
    with torch.no_grad():
        sft, _ = reply_logprobs(model, *args)
        policy = add_lora(model, "CAUSAL_LM", r=4, alpha=8, dropout=0.0)
        for n, p in policy.named_parameters():
            if "lora_B" in n:
                p.normal_()
        trained, _ = ReplyLogprobs(policy)(*args)
        with reference_mode(policy) as ref:
            reference, _ = reply_logprobs(ref, *args)
    assert not torch.allclose(torch.cat(trained), torch.cat(sft))
    torch.testing.assert_close(torch.cat(reference), torch.cat(sft), rtol=0, atol=0)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_logprobs_equal_cpu_ones(tiny_policy):
    model, tokenizer = tiny_policy
    s = _samples(model, tokenizer)
    args = (s.prompt_ids, _groups(s, 3), tokenizer.pad_token_id)
    with torch.no_grad():
        cpu, _ = reply_logprobs(model, *args)
        gpu, _ = reply_logprobs(model.to("cuda"), *args)
    for a, b in zip(gpu, cpu, strict=True):
        assert a.device.type == "cuda"
        torch.testing.assert_close(a.cpu(), b, atol=1e-4, rtol=0)
