"""Sample k replies per prompt: no gradients, KV cache, one prefill per prompt, stop at EOS.

The one generation path of distalign: the gold benchmark samples its replies with it, REINFORCE
its rollouts, and the comparison the replies of each policy.

    from distalign.models.generate import SamplingConfig, sample_replies
    out = sample_replies(model, tokenizer, [[{"role": "user", "content": "Hi"}]], k=4,
                         config=SamplingConfig(max_completion_length=64, temperature=0.8))
    out.texts[0]      # reply text of sample 0 (prompt 0, sample 0)

Why not ``model.generate``: with ``num_return_sequences=k`` it repeats each prompt k times
before the prefill, so the prompt is computed k times; here it is computed once and its KV
cache is repeated. Rows that have finished are dropped from the batch as they finish, so a
short reply does not keep paying for the longest one. The log-prob of each sampled token
under the sampling distribution is returned too (the "old" log-probs of on-policy RL).
"""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from distalign.data.pairs import render_prompt_ids
from distalign.models.templates import rendering_of
from distalign.tracking import progress_bar


@dataclass
class SamplingConfig:
    """Decoding settings shared by the benchmark, rollouts and evaluation."""

    max_completion_length: int = 128
    """Reply length limit in tokens; a reply that reaches it without EOS counts as cut off."""
    temperature: float = 1.0
    """Softmax temperature; 0 means greedy decoding."""
    top_p: float = 1.0
    """Nucleus sampling: keep the smallest set of tokens with this much probability mass."""
    top_k: int = 0
    """Keep only the k most likely tokens (0: off; vLLM's -1 is read as 0)."""
    sampling_batch_size: int = 8
    """Prompts per prefill; each expands to ``k`` rows during decoding."""
    seed: int = 0
    """Seed of the sampling generator; the same seed, prompts (in the same order), model and
    sampling_batch_size give the same replies (each batch of prompts draws from its own
    stream, so a prompt's replies change with the batch it falls in)."""
    chat_template_kwargs: dict[str, Any] | None = None
    """Other arguments of the chat template where prompts are rendered, for the policy and
    the reward models alike (TRL's GRPO/RLOO key): ``'{enable_thinking: false}'`` for Qwen3."""

    def __post_init__(self):
        from distalign.config import resolve_nulls

        resolve_nulls(self)
        if self.max_completion_length < 1:
            raise ValueError(
                f"max_completion_length must be >= 1, got {self.max_completion_length}"
            )
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.top_k == -1:  # vLLM's "off", common in TRL configs that use vLLM
            self.top_k = 0
        if self.top_k < 0:
            raise ValueError(f"top_k must be >= 0 (0: off; -1 is read as 0), got {self.top_k}")
        if self.sampling_batch_size < 1:
            raise ValueError(f"sampling_batch_size must be >= 1, got {self.sampling_batch_size}")
        if self.chat_template_kwargs is not None and not isinstance(
            self.chat_template_kwargs, dict
        ):
            raise ValueError(
                "chat_template_kwargs must be a mapping of the template's arguments, got "
                f"{self.chat_template_kwargs!r}"
            )


def sampling_of(cfg: SamplingConfig, seed: int | None = None) -> SamplingConfig:
    """The plain decoding settings of a command's config (which inherits them), optionally
    with another seed."""
    values = {f.name: getattr(cfg, f.name) for f in dataclasses.fields(SamplingConfig)}
    if seed is not None:
        values["seed"] = seed
    return SamplingConfig(**values)


@dataclass
class Samples:
    """k samples per prompt, flattened prompt-major: row ``i * k + j`` is sample j of prompt i."""

    prompt_ids: list[list[int]]  # per prompt, rendered through the chat template
    reply_ids: list[list[int]]  # per sample, including the EOS token when it finished
    logprobs: list[list[float]]  # per sample, log-prob of each reply token when sampled
    finished: list[bool]  # per sample: ended with EOS (False: cut at max_completion_length)
    texts: list[str]  # per sample, decoded without special tokens
    k: int

    def prompt_index(self, row: int) -> int:
        return row // self.k


def stop_token_ids(model, tokenizer) -> list[int]:
    """EOS ids from the generation config and the tokenizer (SmolLM2: ``<|im_end|>``)."""
    ids = getattr(model.generation_config, "eos_token_id", None)
    ids = [] if ids is None else ([ids] if isinstance(ids, int) else list(ids))
    if tokenizer.eos_token_id is not None:
        ids.append(tokenizer.eos_token_id)
    return sorted(set(ids))


def _cache_io(model) -> tuple[str, str]:
    """(forward kwarg, output attribute) of the KV cache: ``cache`` in newer transformers."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model  # PEFT wraps
    if "cache" in inspect.signature(base.forward).parameters:
        return "cache", "cache"
    return "past_key_values", "past_key_values"


def filter_logits(logits: torch.Tensor, top_p: float, top_k: int) -> torch.Tensor:
    """Mask logits (N, V) outside top-k / the top-p nucleus with -inf. Keeps at least one."""
    if top_k and top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[:, -1:]  # (N, 1)
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)  # (N, V)
        probs = torch.softmax(sorted_logits, dim=-1)
        # drop a token when the mass before it already reaches top_p
        drop_sorted = (probs.cumsum(-1) - probs) >= top_p
        drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    return logits


def _has_float64(device: torch.device) -> bool:
    return device.type != "mps"  # Apple's MPS backend has no float64


def _uniform64(n: int, generator, device: torch.device) -> torch.Tensor:
    """(n, 1) uniforms on [0, 1) in float64 on ``device`` (CPU where it has no float64), drawn
    from ``generator``: 53 random bits, or two 24-bit fp32 draws joined into 48 on MPS."""
    if _has_float64(device):
        return torch.rand(n, 1, generator=generator, device=device, dtype=torch.float64)
    hi, lo = torch.rand(2, n, 1, generator=generator, device=device).cpu().double()
    return hi + lo * 2.0**-24


def _inverse_cdf(probs: torch.Tensor, generator) -> torch.Tensor:
    """One exact draw per row of unnormalised probabilities (N, C) -> column index (N,).

    Float64 cumulative sum + binary search. An fp32 running sum rounds each bin's width to a
    multiple of the sum's ulp (6e-8 near 1): over a 49k vocabulary that is a total-variation
    error of ~3e-4 per token, and a token with p below ~3e-8 gets a zero-width bin and is never
    drawn. In float64 the widths are exact to ~1e-16 (p itself keeps fp32's relative precision).
    CPU time per draw from (8, 49,152), one thread: fp32 sum 0.3 ms, this 0.5 ms (2 ms with
    a second float64 buffer instead of the in-place sum: the allocation dominates), Gumbel-max
    with float64 noise 7-8 ms (a uniform and two logs per token), ``torch.multinomial`` 9-10 ms.
    """
    device = probs.device if _has_float64(probs.device) else torch.device("cpu")
    cdf = probs.to(device, torch.float64, copy=True).cumsum_(-1)  # (N, C), one buffer
    u = _uniform64(probs.shape[0], generator, probs.device).to(device) * cdf[:, -1:]
    # side="right": the first bin whose CDF exceeds u, so a zero-mass bin is never drawn (u = 0)
    idx = torch.searchsorted(cdf, u, side="right").squeeze(-1).clamp_(max=probs.shape[-1] - 1)
    return idx.to(probs.device)


NUCLEUS_CANDIDATES = 256  # top-p looks at the top tokens first; rows needing more fall back


def _next_tokens(
    logits: torch.Tensor, config: SamplingConfig, generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """Pick one token per row of logits (N, V) -> tokens (N,), log-probs (N,).

    The log-prob is that of the tempered, *unfiltered* policy, log softmax(logits / T), the
    quantity a teacher-forced pass recomputes; top-k/top-p only decide which tokens may be
    drawn (as in Hugging Face's warpers: top-k first, then the nucleus of what is left). The
    draw is exact: the chosen token's frequency is its probability under the tempered,
    filtered and renormalised distribution (``_inverse_cdf``).
    """
    logits = logits.float()
    if config.temperature == 0:
        logp = torch.log_softmax(logits, dim=-1)
        tokens = logits.argmax(-1)
        return tokens, logp.gather(-1, tokens[:, None]).squeeze(-1)
    logp = torch.log_softmax(logits / config.temperature, dim=-1)  # (N, V)
    top_k, top_p = config.top_k, config.top_p
    if not top_k and top_p >= 1.0:
        tokens = _inverse_cdf(logp.exp(), generator)
        return tokens, logp.gather(-1, tokens[:, None]).squeeze(-1)
    k = min(top_k or NUCLEUS_CANDIDATES, logp.shape[-1])
    cand_logp, cand_idx = torch.topk(logp, k, dim=-1)  # (N, k), sorted descending
    if top_k:  # the nucleus is taken within the renormalised top-k
        cand_logp = cand_logp - cand_logp.logsumexp(-1, keepdim=True)
    probs = cand_logp.exp()  # (N, k)
    keep = (probs.cumsum(-1) - probs) < top_p  # mass before a token below top_p
    covered = probs.sum(-1) >= top_p if not top_k else torch.ones_like(keep[:, 0])
    tokens = cand_idx.gather(-1, _inverse_cdf(probs * keep, generator)[:, None]).squeeze(-1)
    if not bool(covered.all()):  # nucleus wider than the candidates: full sort for those rows
        rows = (~covered).nonzero().squeeze(-1)
        full = filter_logits(logp[rows], top_p, 0).softmax(-1)
        tokens[rows] = _inverse_cdf(full, generator)
    return tokens, logp.gather(-1, tokens[:, None]).squeeze(-1)


@torch.no_grad()
def sample_token_ids(
    model,
    prompt_ids: Sequence[Sequence[int]],
    k: int,
    config: SamplingConfig,
    stop_ids: Sequence[int],
    pad_token_id: int,
    progress: bool = False,
) -> tuple[list[list[int]], list[list[float]], list[bool]]:
    """Token-level sampler: prompt token lists -> (reply ids, log-probs, finished) per sample."""
    device = next(model.parameters()).device
    stop = torch.tensor(sorted(stop_ids), device=device)
    replies: list[list[int]] = []
    logps: list[list[float]] = []
    finished: list[bool] = []
    starts = range(0, len(prompt_ids), config.sampling_batch_size)
    for b, start in enumerate(progress_bar(starts, desc="sampling", show=progress, unit="batch")):
        batch = prompt_ids[start : start + config.sampling_batch_size]
        # batches far apart in seed space: consecutive seeds (e.g. RL steps) never share a stream
        generator = torch.Generator(device=device).manual_seed(config.seed + b * 1_000_003)
        r, lp, f = _sample_batch(model, batch, k, config, stop, pad_token_id, generator, device)
        replies += r
        logps += lp
        finished += f
    return replies, logps, finished


def _sample_batch(model, batch, k, config, stop, pad_token_id, generator, device):
    width = max(len(p) for p in batch)
    # Left padding so every prompt's last token sits in the last column.
    input_ids = torch.full((len(batch), width), pad_token_id, dtype=torch.long, device=device)
    mask = torch.zeros((len(batch), width), dtype=torch.long, device=device)
    for i, p in enumerate(batch):
        input_ids[i, width - len(p) :] = torch.as_tensor(p, device=device)
        mask[i, width - len(p) :] = 1
    position_ids = (mask.cumsum(-1) - 1).clamp(min=0)  # (B, P): positions restart per row
    # logits_to_keep=1: only the last position's logits, never a (B, P, V) tensor.
    out = model(
        input_ids=input_ids,
        attention_mask=mask,
        position_ids=position_ids,
        use_cache=True,
        logits_to_keep=1,
    )
    cache_kwarg, cache_attr = _cache_io(model)
    cache = getattr(out, cache_attr)
    # one prefill per prompt, its cache shared by k samples. reorder_cache (beam search's row
    # selection) is the one every cache has, recurrent layers' states included (LFM2, Qwen3.5)
    cache.reorder_cache(torch.arange(len(batch), device=device).repeat_interleave(k))
    logits = out.logits[:, -1].repeat_interleave(k, 0)  # (B*k, V)
    mask = mask.repeat_interleave(k, 0)  # (B*k, P)
    next_pos = position_ids[:, -1].repeat_interleave(k, 0) + 1  # (B*k,)

    n = len(batch) * k
    active = torch.arange(n, device=device)  # original row of each live row
    tokens_out: list[list[int]] = [[] for _ in range(n)]
    logps_out: list[list[float]] = [[] for _ in range(n)]
    done = [False] * n
    for step in range(config.max_completion_length):
        tokens, logp = _next_tokens(logits, config, generator)
        for row, t, lp in zip(active.tolist(), tokens.tolist(), logp.tolist(), strict=True):
            tokens_out[row].append(t)
            logps_out[row].append(lp)
        ended = torch.isin(tokens, stop)  # (A,)
        for row in active[ended].tolist():
            done[row] = True
        if bool(ended.all()) or step == config.max_completion_length - 1:
            break
        if bool(ended.any()):
            # Drop finished rows from the batch (and their cache) instead of decoding padding.
            keep = (~ended).nonzero().squeeze(-1)
            cache.reorder_cache(keep)
            active, tokens, mask, next_pos = active[keep], tokens[keep], mask[keep], next_pos[keep]
        mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)  # (A, P + step + 1)
        out = model(
            input_ids=tokens[:, None],
            attention_mask=mask,
            position_ids=next_pos[:, None],
            use_cache=True,
            **{cache_kwarg: cache},
        )
        cache = getattr(out, cache_attr)
        logits = out.logits[:, -1]
        next_pos = next_pos + 1
    return tokens_out, logps_out, done


def sample_replies(
    model,
    tokenizer,
    prompts: Sequence[list[dict[str, str]]],
    k: int = 1,
    config: SamplingConfig | None = None,
    progress: bool = False,
) -> Samples:
    """Chat prompts (message lists) -> k sampled replies each, with token ids and log-probs."""
    config = config or SamplingConfig()
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    was_training = model.training
    model.eval()
    try:
        prompt_ids = [render_prompt_ids(tokenizer, p, config.chat_template_kwargs) for p in prompts]
        replies, logps, finished = sample_token_ids(
            model,
            prompt_ids,
            k,
            config,
            stop_token_ids(model, tokenizer),
            tokenizer.pad_token_id,
            progress=progress,
        )
    finally:
        model.train(was_training)
    texts = reply_texts(tokenizer, replies, prompt_ids, k)
    return Samples(prompt_ids, replies, logps, finished, texts, k)


def reply_texts(
    tokenizer, replies: list[list[int]], prompt_ids: list[list[int]], k: int
) -> list[str]:
    """Sampled replies (``k`` per prompt, in order) as text. A chat turn without the
    whitespace around it. A built-in rendering's text (plain, hh) as it came: its first space
    is what joins it to the prompt, and it is decoded after its prompt, then cut off, since a
    SentencePiece tokenizer drops a text's leading "▁" when the reply is decoded alone (TRL
    passes completions unstripped)."""
    if rendering_of(tokenizer) is None:
        return [tokenizer.decode(r, skip_special_tokens=True).strip() for r in replies]
    out = []
    for i, reply in enumerate(replies):
        prompt = prompt_ids[i // k]
        before = tokenizer.decode(prompt, skip_special_tokens=True)
        whole = tokenizer.decode([*prompt, *reply], skip_special_tokens=True)
        alone = tokenizer.decode(reply, skip_special_tokens=True)
        out.append(whole[len(before) :] if whole.startswith(before) else alone)
    return out
