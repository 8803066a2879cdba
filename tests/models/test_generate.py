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

    def reorder_cache(self, idx):  # beam search's row selection: k copies, or the live rows
        idx = idx.tolist()
        if len(idx) > len(self.rows):  # the k copies of each prompt's prefill, prompt-major
            k = len(idx) // len(self.rows)
            assert idx == [i for i in range(len(self.rows)) for _ in range(k)], idx
            self.rows = list(range(len(idx)))  # sample i*k + j
        else:
            self.rows = [self.rows[i] for i in idx]


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
        if step == 0:  # prefill, one row per prompt (nobody stops at step 0)
            cache.rows = list(range(n))
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


# --- exact draws: float64 inverse CDF --------------------------------------------------------

# p over a small vocabulary, one token far below fp32's resolution next to a large mass
TINY = torch.tensor([0.75, 2e-8, 0.2, 1e-9, 0.05 - 2.1e-8])


def test_fp32_cumsum_gives_a_tiny_token_no_bin_and_float64_gives_its_exact_one(monkeypatch):
    """Every u in [C_{i−1}, C_i) must draw token i, so its chance is exactly p_i. An fp32
    running sum rounds 0.75 + 2e-8 back to 0.75: token 1's bin is empty, it is never drawn."""
    from distalign.models import generate

    cdf32 = TINY[None].cumsum(-1)[0]
    assert cdf32[1] == cdf32[0] and cdf32[3] == cdf32[2]  # the bug: two zero-width bins
    cdf = TINY.double().cumsum(-1)  # the exact bins
    lower = torch.cat([torch.zeros(1, dtype=torch.float64), cdf[:-1]])
    u = torch.stack([lower + 0.01 * (cdf - lower), (lower + cdf) / 2, cdf - 0.01 * (cdf - lower)])
    u = (u / cdf[-1]).reshape(-1, 1)  # (15, 1): near both ends and the middle of every bin
    monkeypatch.setattr(generate, "_uniform64", lambda n, g, d: u)
    draws = generate._inverse_cdf(TINY.expand(len(u), -1), None)
    assert draws.tolist() == [0, 1, 2, 3, 4] * 3


def _chi_square_p_value(draws: torch.Tensor, expected: torch.Tensor) -> float:
    from scipy.stats import chisquare

    keep = expected > 0
    counts = torch.bincount(draws, minlength=len(expected)).double()
    assert (counts[~keep] == 0).all()  # a token outside the support is never drawn
    return chisquare(counts[keep].numpy(), (expected[keep] * len(draws)).numpy()).pvalue


SMALL_P = torch.tensor(
    [0.3, 0.2, 0.15, 0.1, 0.08, 0.06, 0.05, 0.03, 0.02, 0.008, 0.0015, 0.0005], dtype=torch.float64
)


@pytest.mark.parametrize(
    ("temperature", "top_p", "top_k"),
    [(1.0, 1.0, 0), (0.8, 1.0, 0), (1.0, 0.9, 0), (1.0, 1.0, 6), (0.8, 0.95, 10)],
)
def test_empirical_distribution_is_pi(temperature, top_p, top_k):
    """200,000 draws from a 12-token vocabulary (smallest p 5e-4) against softmax(filter(ℓ/T)):
    chi-square p-value > 1e-3 and total variation < 5e-3 (fixed seed)."""
    from distalign.models.generate import _next_tokens

    logits = SMALL_P.log().float()[None]  # (1, 12)
    n = 200_000
    cfg = SamplingConfig(temperature=temperature, top_p=top_p, top_k=top_k)
    tokens, logp = _next_tokens(logits.expand(n, -1), cfg, torch.Generator().manual_seed(5))
    expected = torch.softmax(filter_logits(logits.double() / temperature, top_p, top_k), -1)[0]
    assert _chi_square_p_value(tokens, expected) > 1e-3
    freq = torch.bincount(tokens, minlength=12).double() / n
    assert 0.5 * (freq - expected).abs().sum() < 5e-3
    # the log-prob returned is the tempered, unfiltered policy's (what teacher forcing recomputes)
    torch.testing.assert_close(logp, torch.log_softmax(logits / temperature, -1)[0, tokens])


def test_draws_without_float64_on_the_device(monkeypatch):
    """Where the device has no float64 (MPS), the sum runs on the CPU and u joins two fp32
    draws: still the right distribution, and u has more than fp32's 24 bits."""
    from distalign.models import generate

    monkeypatch.setattr(generate, "_has_float64", lambda device: False)
    u = generate._uniform64(10_000, torch.Generator().manual_seed(0), torch.device("cpu"))
    assert u.dtype == torch.float64 and u.min() >= 0 and u.max() < 1
    assert ((u * 2**24) % 1 != 0).any()  # not all on fp32's grid
    draws = generate._inverse_cdf(
        SMALL_P.float().expand(100_000, -1), torch.Generator().manual_seed(1)
    )
    assert _chi_square_p_value(draws, SMALL_P) > 1e-3
