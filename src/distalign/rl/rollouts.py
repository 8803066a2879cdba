"""Rollouts: a step's prompts -> sampled replies with their on-policy log-probs, and the
frozen reference's log-probs of the same tokens; ``evaluate_policy`` reads one reply per
held-out prompt the same way (reward, KL to the reference, gold reward on the benchmark).

Sampling and the reference pass run with the policy in eval mode (dropout off), so the
log-probs are those of the policy that is being trained, not of a dropped-out copy.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from distalign.data.pairs import render_prompt_ids
from distalign.losses import kl_estimates
from distalign.models.generate import reply_texts, sample_token_ids, sampling_of, stop_token_ids
from distalign.rl.config import is_gold
from distalign.rl.logprobs import pad_reply_tensors, reference_mode, reply_logprobs
from distalign.rl.rewards import prompt_columns
from distalign.tracking import nan_to_none

if TYPE_CHECKING:
    from distalign.rl.config import RLTrainConfig


def _encode_prompts(tokenizer, prompts, cfg: RLTrainConfig) -> list[list[int]]:
    keep = -cfg.max_prompt_length if cfg.max_prompt_length else None
    return [render_prompt_ids(tokenizer, p, cfg.chat_template_kwargs)[keep:] for p in prompts]


class Rollouts:
    """One step's samples: prompts and their token ids, the replies' token ids and texts,
    the sampler's on-policy log-probs (padded, with their mask), and which replies ended."""

    def __init__(self, prompts, prompt_ids, replies, sample_logps, finished, texts, k, device):
        self.prompts, self.prompt_ids, self.k = prompts, prompt_ids, k
        self.replies, self.finished, self.texts = replies, finished, texts
        self.logps, self.mask = pad_reply_tensors(
            [torch.tensor(x, device=device) for x in sample_logps]
        )

    def groups(self, start: int, stop: int):
        """The replies [start, stop) (prompt-major, k per prompt) as the prompt ids of the
        prompts they belong to and, per prompt, its replies in the range: a range may cut a
        prompt's group (a micro-batch smaller than num_generations)."""
        stop = min(stop, len(self.replies))
        first, last = start // self.k, (stop - 1) // self.k
        ids = self.prompt_ids[first : last + 1]
        groups = [
            self.replies[max(start, i * self.k) : min(stop, (i + 1) * self.k)]
            for i in range(first, last + 1)
        ]
        return ids, groups


def rollout(
    policy, tokenizer, prompts, cfg: RLTrainConfig, seed: int, k: int | None = None
) -> Rollouts:
    """Sample ``k`` (default ``cfg.num_generations``) replies per prompt without gradients."""
    k = k or cfg.num_generations
    prompt_ids = _encode_prompts(tokenizer, prompts, cfg)
    sampling = sampling_of(cfg, seed=seed)
    was = policy.training
    policy.eval()
    replies, logps, finished = sample_token_ids(
        policy,
        prompt_ids,
        k,
        sampling,
        stop_token_ids(policy, tokenizer),
        tokenizer.pad_token_id,
    )
    policy.train(was)
    device = next(policy.parameters()).device
    texts = reply_texts(tokenizer, replies, prompt_ids, k)
    return Rollouts(prompts, prompt_ids, replies, logps, finished, texts, k, device)


@torch.no_grad()
def reference_logprobs(
    policy, ref_model, ro: Rollouts, cfg: RLTrainConfig, pad_id: int
) -> torch.Tensor:
    """The frozen reference's log-probs (B, T) of the rollouts' reply tokens, padded like
    ``ro.logps``: the SFT copy, or the policy with its LoRA adapters off, in eval mode."""
    out = []
    with reference_mode(policy, ref_model) as ref:
        step = cfg.per_device_train_batch_size
        for s in range(0, len(ro.replies), step):
            ids, groups = ro.groups(s, s + step)
            lp, _ = reply_logprobs(
                ref, ids, groups, pad_id, cfg.temperature or 1.0, cfg.prefix_sharing
            )
            out += lp
    return pad_reply_tensors(out)[0]


def evaluate_policy(
    policy, ref_model, tokenizer, prompts, reward, cfg: RLTrainConfig, pad_id: int
) -> dict[str, float]:
    """Mean reward and KL to the reference of ``num_generations_eval`` (default 1) sampled
    replies per held-out prompt (fixed seed)."""
    k = cfg.num_generations_eval or 1
    ro = rollout(policy, tokenizer, prompts, cfg, seed=cfg.seed + 10_000, k=k)
    reference = None
    if reward.needs_reference:
        per_prompt = reference_distributions(policy, ref_model, tokenizer, reward, prompts, cfg)
        reference = {n: p.repeat_interleave(k, 0) for n, p in per_prompt.items()}
    chats = [p for p in prompts for _ in range(k)]
    scores = reward(
        chats,
        ro.texts,
        reference,
        columns=prompt_columns(chats),
        completion_ids=ro.replies,
        log=False,  # not a training step's samples
    )
    ref_lp = reference_logprobs(policy, ref_model, ro, cfg, pad_id)
    kl = kl_estimates(ro.logps, ref_lp, ro.mask)
    per_source = scores.per_source or {}
    result = {
        # a reply no source scored is out of the mean; none scored: None (JSON has no NaN)
        "reward": nan_to_none(scores.rewards.nanmean().item()),
        **{f"reward/{n}": nan_to_none(v.nanmean().item()) for n, v in per_source.items()},
        "kl": kl["k1"].mean().item(),
        "length": ro.mask.sum(-1).mean().item(),
        "eos_rate": sum(ro.finished) / len(ro.finished),
    }
    if is_gold(cfg.eval_dataset_name or cfg.dataset_name):  # the truth (never trained on)
        from distalign.gold.judge import GROUPS, judge, prompt_text

        # the judge's encoder runs where the policy does (a use_cpu run stays off the GPU)
        device = next(policy.parameters()).device
        judged = judge([prompt_text(p) for p in chats], ro.texts, device)
        result["gold_mean"] = float(judged["gold_mean"].mean())
        # each annotator group's mean reward: does the policy serve the worse-off group?
        result |= {f"gold_{g.name}": float(judged[f"gold_{g.name}"].mean()) for g in GROUPS}
    return result


def reference_distributions(
    policy, ref_model, tokenizer, reward, prompts, cfg: RLTrainConfig
) -> dict[str, torch.Tensor]:
    """For the win-probability functional (and a mixture RM's gains): per reward model that
    uses it, the distribution (prompts, n) or atoms (prompts, K) of one SFT reply per prompt."""
    with reference_mode(policy, ref_model) as ref:
        ro = rollout(
            ref,
            tokenizer,
            prompts,
            cfg,
            seed=cfg.seed + 20_000,
            k=1,
        )
    return reward.distributions(prompts, ro.texts)
