"""The shared sampler on a tiny random Llama: correctness against HF and teacher forcing."""

from __future__ import annotations

import pytest
import torch

from distalign.models.generate import (
    SamplingConfig,
    filter_logits,
    sample_replies,
    sample_token_ids,
)

PROMPTS = [
    [{"role": "user", "content": "Hello there"}],
    [{"role": "user", "content": "A much longer prompt, so that the batch needs left padding."}],
    [{"role": "user", "content": "Third"}],
]


def test_greedy_matches_hf_generate(tiny_policy):
    model, tokenizer = tiny_policy
    out = sample_replies(
        model, tokenizer, PROMPTS, config=SamplingConfig(max_completion_length=12, temperature=0)
    )
    for prompt_ids, reply in zip(out.prompt_ids, out.reply_ids, strict=True):
        ids = torch.tensor([prompt_ids])
        ref = model.generate(
            ids,
            attention_mask=torch.ones_like(ids),
            max_new_tokens=12,
            do_sample=False,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )
        assert reply == ref[0, len(prompt_ids) :].tolist()[: len(reply)]


def test_sampled_logprobs_equal_teacher_forced(tiny_policy):
    model, tokenizer = tiny_policy
    cfg = SamplingConfig(max_completion_length=10, temperature=1.0, seed=3, sampling_batch_size=2)
    out = sample_replies(model, tokenizer, PROMPTS, k=3, config=cfg)
    assert len(out.reply_ids) == 9
    for i, (reply, logps) in enumerate(zip(out.reply_ids, out.logprobs, strict=True)):
        prompt = out.prompt_ids[out.prompt_index(i)]
        ids = torch.tensor([prompt + reply])
        with torch.no_grad():
            logits = model(ids).logits[0, len(prompt) - 1 : -1]  # (L, V)
        ref = (
            torch.log_softmax(logits.float(), -1)
            .gather(-1, torch.tensor(reply)[:, None])
            .squeeze(-1)
        )
        torch.testing.assert_close(torch.tensor(logps), ref, atol=1e-4, rtol=0)


def test_same_seed_same_replies_and_eos_handling(tiny_policy):
    model, tokenizer = tiny_policy
    cfg = SamplingConfig(max_completion_length=8, temperature=1.0, seed=7)
    a = sample_replies(model, tokenizer, PROMPTS, k=2, config=cfg)
    b = sample_replies(model, tokenizer, PROMPTS, k=2, config=cfg)
    assert a.reply_ids == b.reply_ids
    for reply, done in zip(a.reply_ids, a.finished, strict=True):
        assert len(reply) <= 8
        if done:  # ends at its first EOS
            assert reply[-1] == tokenizer.eos_token_id and tokenizer.eos_token_id not in reply[:-1]
        else:
            assert len(reply) == 8 and tokenizer.eos_token_id not in reply


class _ScriptedCache:
    """Tracks which original row each live batch row is, like a KV cache would."""

    def __init__(self, n: int, prompt_len: int):
        self.rows, self.prompt_len = list(range(n)), prompt_len

    def batch_repeat_interleave(self, k):
        self.rows = list(range(len(self.rows) * k))  # sample i*k + j of prompt i

    def batch_select_indices(self, idx):
        self.rows = [self.rows[i] for i in idx.tolist()]


class _Scripted(torch.nn.Module):
    """Sample r emits token 3 at steps 0..r and EOS (0) at step r + 1."""

    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(1))
        self.generation_config = type("G", (), {"eos_token_id": 0})()
        self.batch_sizes = []

    def forward(
        self, input_ids, attention_mask, position_ids, use_cache, cache=None, logits_to_keep=0
    ):
        n = input_ids.shape[0]
        self.batch_sizes.append(n)
        # a step's logits come from the call that fed the previous token: prefill -> step 0
        cache = cache or _ScriptedCache(n, attention_mask.shape[1] - 1)
        step = attention_mask.shape[1] - 1 - cache.prompt_len
        if step == 0:  # prefill, one row per prompt: nobody stops at step 0
            cache.rows = [10**6] * n
        logits = torch.full((n, 1, 5), -10.0)
        for i, row in enumerate(cache.rows):
            logits[i, 0, 0 if step > row else 3] = 10.0
        return type("Out", (), {"logits": logits, "cache": cache})()


def test_stops_at_eos_and_drops_finished_rows():
    model = _Scripted()
    replies, _, finished = sample_token_ids(
        model,
        [[1], [1]],
        k=2,
        config=SamplingConfig(max_completion_length=6, temperature=0),
        stop_ids=[0],
        pad_token_id=0,
    )
    assert [len(r) for r in replies] == [2, 3, 4, 5]
    assert all(finished) and all(r[-1] == 0 for r in replies)
    assert model.batch_sizes == [2, 4, 3, 2, 1]  # one prefill per prompt; finished rows dropped


def test_top_p_and_top_k_filter():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    kept = torch.isfinite(filter_logits(logits, top_p=0.7, top_k=0))
    assert kept.tolist() == [[True, True, False, False]]
    kept = torch.isfinite(filter_logits(logits, top_p=1.0, top_k=3))
    assert kept.tolist() == [[True, True, True, False]]
    kept = torch.isfinite(filter_logits(logits, top_p=0.01, top_k=0))
    assert kept.tolist() == [[True, False, False, False]]


def test_bad_sampling_config():
    with pytest.raises(ValueError, match="top_p"):
        SamplingConfig(top_p=0)
    with pytest.raises(ValueError, match="max_completion_length"):
        SamplingConfig(max_completion_length=0)


@pytest.mark.parametrize(("top_p", "top_k"), [(1.0, 0), (0.9, 0), (1.0, 5), (0.8, 20), (0.999, 0)])
def test_fast_sampling_matches_the_filtered_distribution(top_p, top_k):
    """Empirical token frequencies of the fast path equal softmax(filter_logits(...))."""
    from distalign.models.generate import _next_tokens

    torch.manual_seed(0)
    logits = torch.randn(1, 400) * 2.0
    n = 40000
    cfg = SamplingConfig(temperature=0.7, top_p=top_p, top_k=top_k)
    gen = torch.Generator().manual_seed(1)
    tokens, logp = _next_tokens(logits.expand(n, -1), cfg, gen)
    freq = torch.bincount(tokens, minlength=400).float() / n
    expected = torch.softmax(filter_logits(logits / 0.7, top_p, top_k), -1)[0]
    assert (freq[expected == 0] == 0).all()  # never a filtered token
    assert (freq - expected).abs().max() < 0.01
    torch.testing.assert_close(logp, torch.log_softmax(logits / 0.7, -1)[0, tokens])


def test_inverse_cdf_never_draws_a_zero_mass_bin():
    from distalign.models.generate import _inverse_cdf

    probs = torch.tensor([[0.0, 0.0, 0.3, 0.0, 0.7]]).expand(5000, -1)
    draws = _inverse_cdf(probs, torch.Generator().manual_seed(0))
    assert set(draws.tolist()) <= {2, 4}
