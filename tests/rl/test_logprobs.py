"""Teacher-forced log-probs: equal to sampling's, exact under prefix sharing over k samples."""

from __future__ import annotations

import functools

import pytest
import torch
from transformers import AutoModelForCausalLM, LlamaForCausalLM

from distalign.data.pairs import build_shared_rows
from distalign.losses import reinforce_loss
from distalign.models.generate import SamplingConfig, sample_replies
from distalign.models.load import attention_mask_for
from distalign.models.lora import add_lora
from distalign.rl import logprobs as logprobs_module
from distalign.rl.logprobs import (
    ReplyLogprobs,
    gather_logprobs,
    logit_transform,
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


def _max_gap_to_sampling(model, tokenizer, k=3):
    """max |teacher-forced − sampled| log-prob over the replies of PROMPTS, and the shortest
    prompt's length in tokens."""
    s = _samples(model, tokenizer, k=k)
    with torch.no_grad():
        logps, _ = reply_logprobs(model, s.prompt_ids, _groups(s, k), tokenizer.pad_token_id)
    gap = max(
        (got - torch.tensor(sampled)).abs().max().item()
        for got, sampled in zip(logps, s.logprobs, strict=True)
    )
    return gap, min(len(p) for p in s.prompt_ids)


FAMILIES = [
    "gemma2", "gemma3", "mistral", "qwen2", "cohere", "granite", "hyperclovax", "minicpm3"
]  # fmt: skip


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
@pytest.mark.parametrize("family", FAMILIES)
def test_teacher_forced_equals_sampling_for_windows_and_logit_caps(family, attn, smol_tokenizer):
    # a sliding window shorter than the prompts; logits capped or scaled by the forward: what
    # the sampler reads (the model's own forward, its own masks) the teacher-forced pass reads
    from tests.conftest import TINY_WINDOW, tiny_family_config

    config, expected = tiny_family_config(family, len(smol_tokenizer))
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config).eval()
    if attn == "eager":
        model.set_attn_implementation("eager")
    assert logprobs_module._TRANSFORMS.get(model) is None
    logit_transform(model)
    assert logprobs_module._TRANSFORMS[model][0] == expected
    gap, shortest_prompt = _max_gap_to_sampling(model, smol_tokenizer)
    assert shortest_prompt > TINY_WINDOW
    assert gap < 1e-4


@pytest.mark.parametrize("family", ["gemma2", "cohere", "granite", "hyperclovax", "minicpm3"])
def test_the_logit_transform_is_found_in_bfloat16(family, smol_tokenizer):
    # the nearest candidate within bfloat16's rounding of the forward
    from tests.conftest import tiny_family_config

    config, expected = tiny_family_config(family, len(smol_tokenizer))
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config).to(torch.bfloat16).eval()
    logit_transform(model)
    assert logprobs_module._TRANSFORMS[model][0] == expected


def test_a_window_the_block_mask_ignored_would_show(smol_tokenizer, monkeypatch):
    # the test above bites: without the window in the block mask the readings part
    from tests.conftest import tiny_family_config

    config, _ = tiny_family_config("mistral", len(smol_tokenizer))
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config).eval()
    monkeypatch.setattr(logprobs_module, "attention_mask_for", lambda m, mask, *a, **k: mask)
    assert _max_gap_to_sampling(model, smol_tokenizer)[0] > 1e-3


@pytest.mark.parametrize("family", ["lfm2", "qwen3_5"])
def test_hybrid_recurrent_models_sample_and_read_one_reply_per_row(family, smol_tokenizer):
    # a recurrent layer's state would run from one reply of a shared row into the next: the
    # teacher-forced pass reads one reply per row whatever prefix_sharing says, and equals the
    # sampler (whose cache, recurrent states included, is shared by k samples, rows dropped
    # as they finish)
    from tests.conftest import tiny_family_config

    config, _ = tiny_family_config(family, len(smol_tokenizer))
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config).eval()
    with torch.no_grad():  # replies that end early, so finished rows leave the batch
        model.get_output_embeddings().weight[smol_tokenizer.eos_token_id] *= 200
    cfg = SamplingConfig(max_completion_length=12, temperature=1.0, seed=5)
    s = sample_replies(model, smol_tokenizer, PROMPTS * 2, k=4, config=cfg)
    groups = [s.reply_ids[i * 4 : i * 4 + 4] for i in range(4)]
    with torch.no_grad():
        logps, _ = reply_logprobs(model, s.prompt_ids, groups, smol_tokenizer.pad_token_id)
    for got, sampled in zip(logps, s.logprobs, strict=True):
        torch.testing.assert_close(got, torch.tensor(sampled), atol=2e-4, rtol=0)
    pad = smol_tokenizer.pad_token_id
    rows = build_shared_rows([(s.prompt_ids[0], groups[0])], pad)
    with pytest.raises(ValueError, match=r"layers: the block masks.*one reply per row"):
        attention_mask_for(model, rows["attention_mask"], rows["position_ids"], shared=True)


class _TemperedLlama(LlamaForCausalLM):
    """A forward that scales its logits with no config key saying so."""

    @functools.wraps(LlamaForCausalLM.forward)  # its parameters, for the sampler to read
    def forward(self, *args, **kwargs):
        out = super().forward(*args, **kwargs)
        out.logits = out.logits * 3.0
        return out


def test_an_unrecognised_logit_transform_reads_the_forwards_own_logits(smol_tokenizer):
    from tests.conftest import tiny_llama_config

    torch.manual_seed(0)
    model = _TemperedLlama(tiny_llama_config(len(smol_tokenizer))).eval()
    with pytest.warns(UserWarning, match="_TemperedLlama's forward changes its head's logits"):
        assert logit_transform(model) is None
    assert _max_gap_to_sampling(model, smol_tokenizer)[0] < 1e-4


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


def test_gathered_entropies_carry_their_gradient_when_asked():
    torch.manual_seed(1)
    head = torch.nn.Linear(8, 50, bias=False)
    h, tokens = torch.randn(13, 8, requires_grad=True), torch.randint(0, 50, (13,))
    _, ent = gather_logprobs(h, head, tokens, temperature=0.7, chunk=5)
    assert not ent.requires_grad
    _, ent = gather_logprobs(h, head, tokens, temperature=0.7, chunk=5, entropy_grad=True)
    full = torch.log_softmax(head(h) / 0.7, -1)
    want = -(full.exp() * full).sum(-1)
    torch.testing.assert_close(ent, want)
    (g1,) = torch.autograd.grad(ent.sum(), h)
    (g2,) = torch.autograd.grad(want.sum(), h)
    torch.testing.assert_close(g1, g2)
