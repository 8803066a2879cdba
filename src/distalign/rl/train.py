"""REINFORCE / RLOO alignment of a policy against any reward.

    distalign rl train configs/rl_rloo_scalar.yaml reward=runs/rm_scalar_cpu/final
    distalign rl train configs/rl_rloo_scalar.yaml resume=true

One step, top to bottom (Ahmadian et al. 2024, sequence-level REINFORCE):
  1. sample k replies for each of ``prompts_per_step`` prompts, no gradients, KV cache, one
     prefill per prompt (``distalign.models.generate``); the sampler returns the on-policy
     log-probs, so no separate "old policy" pass is needed;
  2. score the replies (reward model / functional / callable);
  3. reference log-probs from the frozen SFT weights (LoRA: adapters disabled), prefix-shared;
  4. R_i = r_i − β·Σ_t log(π/π_ref) (− a penalty for replies cut at the length limit);
     advantages by RLOO, a moving average of past rewards, or none; optional whitening and,
     for distributional rewards, scaling by 1/(1 + σ);
  5. loss −mean A_i·Σ_t log π(y_t|·) in prompt micro-batches (prefix-shared, chunked LM head),
     gradient accumulation, clipping, AdamW step.
"""

from __future__ import annotations

import json
import logging
import random
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.utils import gather_object, set_seed
from tqdm.auto import tqdm

from distalign.checkpoint import load_checkpoint, resolve_resume, save_checkpoint
from distalign.config import require, save_config
from distalign.data.pairs import render_prompt_ids
from distalign.losses import (
    kl_estimates,
    moving_average_update,
    reinforce_loss,
    rloo_advantages,
    whiten,
)
from distalign.models.generate import SamplingConfig, sample_token_ids, stop_token_ids
from distalign.models.load import DEFAULT_MODEL, load_policy
from distalign.rl.logprobs import ReplyLogprobs, pad_reply_tensors, reference_mode, reply_logprobs
from distalign.rl.rewards import load_reward_source
from distalign.tracking import MetricsLog, peak_memory_gb

log = logging.getLogger(__name__)


@dataclass
class RLTrainConfig:
    """``distalign rl train``: REINFORCE/RLOO against a reward model or a reward function."""

    model: str = DEFAULT_MODEL
    """Policy (and reference) to start from: alias, folder or hub id."""
    reward: str = "distalign.gold.judge:gold_reward"
    """Reward-model folder, or module:function(prompts, replies) -> list[float]."""
    functional: str = "expectation"
    """For a distributional RM: expectation | mean_minus_std | cvar | quantile | win_probability."""
    kappa: float = 1.0
    """κ of mean − κ·std."""
    alpha: float = 0.25
    """α of CVaR_α."""
    tau: float = 0.5
    """τ of the quantile."""
    uncertainty_scaling: bool = False
    """Distributional RM: divide each advantage by 1 + Std[R] of its reply."""
    prompts: str = "gold"
    """gold (the benchmark's training prompts), a preference source, or a .txt file."""
    prompts_split: str = "train"
    """Split of ``prompts``."""
    eval_prompts: str = "gold"
    """Held-out prompts for the periodic evaluation (gold: the benchmark's test prompts)."""
    eval_split: str = "test"
    """Split of ``eval_prompts``."""
    eval_count: int = 16
    """Held-out prompts per evaluation."""
    k: int = 4
    """Samples per prompt."""
    prompts_per_step: int = 8
    """Prompts per optimizer step (per process)."""
    micro_batch_prompts: int = 2
    """Prompts per teacher-forced micro-batch (gradient accumulation inside a step)."""
    sampling: SamplingConfig = field(
        default_factory=lambda: SamplingConfig(max_new_tokens=64, temperature=1.0)
    )
    """Rollout decoding (temperature, top_p, max_new_tokens, batch_size in prompts)."""
    beta: float = 0.05
    """KL coefficient β in R = r − β·Σ log(π/π_ref)."""
    baseline: str = "rloo"
    """rloo | moving_average | none."""
    ema: float | None = None
    """moving_average only: EMA factor α (None: the mean of all past rewards)."""
    whiten_advantages: bool = False
    """Normalise advantages to zero mean, unit std per step."""
    truncation_penalty: float = 0.0
    """Subtracted from the reward of replies cut at max_new_tokens."""
    steps: int = 20
    """Optimizer steps."""
    lr: float = 1e-5
    """AdamW learning rate (constant after a short warm-up)."""
    warmup_steps: int = 0
    """Linear warm-up steps."""
    max_grad_norm: float = 1.0
    """Gradient clipping (0: off)."""
    lora: bool = True
    """Train LoRA adapters; the reference is the same model with adapters off (no copy)."""
    lora_r: int = 16
    """LoRA rank."""
    lora_alpha: int = 32
    """LoRA scaling numerator."""
    merge_lora: bool = False
    """Also save the policy with the adapter merged into the weights."""
    gradient_checkpointing: bool = False
    """Recompute activations in backward."""
    prefix_sharing: bool = True
    """Teacher-forced and reference passes share each prompt across its k samples."""
    max_prompt_tokens: int = 256
    """Longer prompts are cut from the left."""
    eval_every: int = 10
    """Held-out evaluation every N steps (0: only at the end)."""
    eval_at_start: bool = True
    """Evaluate the SFT policy before the first step (the baseline of the comparison)."""
    save_every: int = 10
    """Resumable checkpoint every N steps."""
    keep_checkpoints: bool = True
    """Also keep the policy of every save as checkpoints/step_N (for the over-optimisation
    curve of ``eval compare``; LoRA adapters are small)."""
    output_dir: str = "runs/rl"
    """Checkpoints, final policy, history, metrics, config."""
    resume: bool = False
    """Continue from output_dir/checkpoints/last."""
    seed: int = 0
    """Seed of prompt order, sampling and initialisation."""
    tracker: str = "tensorboard"
    """tensorboard | wandb | trackio | none."""
    reward_batch_size: int = 16
    """Replies per reward-model batch."""

    def __post_init__(self):
        checks = [
            (self.k >= 1 and self.prompts_per_step >= 1, "k and prompts_per_step must be >= 1"),
            (
                self.baseline in ("rloo", "moving_average", "none"),
                "baseline: rloo | moving_average | none",
            ),
            (self.baseline != "rloo" or self.k >= 2, "baseline rloo needs k >= 2"),
            (self.micro_batch_prompts >= 1, "micro_batch_prompts must be >= 1"),
            (self.beta >= 0, "beta must be >= 0"),
            (self.ema is None or 0 <= self.ema < 1, "ema must be in [0, 1)"),
            (
                self.tracker in ("tensorboard", "wandb", "trackio", "none"),
                "tracker: tensorboard | wandb | trackio | none",
            ),
        ]
        require(checks)
        if self.sampling.top_p < 1 or self.sampling.top_k:
            log.warning(
                "top_p/top_k < full vocabulary: replies no longer come from π itself, so the "
                "REINFORCE gradient and the KL estimates are biased (use top_p=1, top_k=0)"
            )


def load_prompts(source: str, split: str) -> list[list[dict[str, str]]]:
    """Chat prompts from the gold benchmark, a preference source (deduplicated) or a .txt file."""
    path = Path(source)
    if source == "gold" and not path.exists():
        from distalign.gold.build import GOLD_DIR

        rows = [
            json.loads(line)
            for line in (GOLD_DIR / "prompts.jsonl").read_text().splitlines()
            if line
        ]
        return [[{"role": "user", "content": r["prompt"]}] for r in rows if r["split"] == split]
    if path.suffix == ".txt":
        return [
            [{"role": "user", "content": line}]
            for line in path.read_text().splitlines()
            if line.strip()
        ]
    from distalign.data.load import load_preferences

    seen, out = set(), []
    for prompt in load_preferences(source, split)["prompt"]:
        key = json.dumps(prompt)
        if key not in seen:
            seen.add(key)
            out.append(prompt)
    return out


def _encode_prompts(tokenizer, prompts, max_tokens: int) -> list[list[int]]:
    return [render_prompt_ids(tokenizer, p)[-max_tokens:] for p in prompts]


def _add_lora(model, cfg: RLTrainConfig):
    from peft import LoraConfig, TaskType, get_peft_model

    config = LoraConfig(
        task_type=TaskType.CAUSAL_LM,
        r=cfg.lora_r,
        lora_alpha=cfg.lora_alpha,
        target_modules="all-linear",
    )
    return get_peft_model(model, config)


class Rollouts:
    """One step's samples: token ids, on-policy and reference log-probs, rewards."""

    def __init__(self, prompts, prompt_ids, replies, sample_logps, finished, texts, k, device):
        self.prompts, self.prompt_ids, self.k = prompts, prompt_ids, k
        self.replies, self.finished, self.texts = replies, finished, texts
        self.logps, self.mask = pad_reply_tensors(
            [torch.tensor(x, device=device) for x in sample_logps]
        )

    def groups(self, start: int, stop: int):
        """Prompt ids and per-prompt reply lists of prompts [start, stop)."""
        stop = min(stop, len(self.prompt_ids))
        return self.prompt_ids[start:stop], [
            self.replies[i * self.k : (i + 1) * self.k] for i in range(start, stop)
        ]


def rollout(
    policy, tokenizer, prompts, cfg: RLTrainConfig, seed: int, k: int | None = None
) -> Rollouts:
    """Sample ``k`` (default ``cfg.k``) replies per prompt without gradients."""
    k = k or cfg.k
    prompt_ids = _encode_prompts(tokenizer, prompts, cfg.max_prompt_tokens)
    sampling = SamplingConfig(**{**cfg.sampling.__dict__, "seed": seed})
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
    texts = [tokenizer.decode(r, skip_special_tokens=True).strip() for r in replies]
    device = next(policy.parameters()).device
    return Rollouts(prompts, prompt_ids, replies, logps, finished, texts, k, device)


@torch.no_grad()
def reference_logprobs(
    policy, ref_model, ro: Rollouts, cfg: RLTrainConfig, pad_id: int
) -> torch.Tensor:
    out = []
    with reference_mode(policy, ref_model) as ref:
        for s in range(0, len(ro.prompt_ids), cfg.micro_batch_prompts):
            ids, groups = ro.groups(s, s + cfg.micro_batch_prompts)
            lp, _ = reply_logprobs(
                ref, ids, groups, pad_id, cfg.sampling.temperature or 1.0, cfg.prefix_sharing
            )
            out += lp
    return pad_reply_tensors(out)[0]


def across_processes(
    accelerator, means: list[float], sums: list[float]
) -> tuple[list[float], list[float]]:
    """Per-process means and sums over all processes (each process has as many completions,
    so the global mean is the mean of the processes' means)."""
    if accelerator.num_processes == 1:
        return means, sums
    values = torch.tensor([*means, *sums], dtype=torch.float64, device=accelerator.device)
    total = accelerator.reduce(values, "sum").tolist()
    n = accelerator.num_processes
    return [x / n for x in total[: len(means)]], total[len(means) :]


def advantages_for(
    cfg: RLTrainConfig,
    shaped: torch.Tensor,
    std: torch.Tensor | None,
    state: dict,
    pooled: torch.Tensor | None = None,
) -> tuple[torch.Tensor, float]:
    """Advantages (B,) and the baseline value used (mean for RLOO). The moving average is
    updated with ``pooled``, the step's rewards of every process (default: ``shaped``), so that
    all processes keep the same baseline."""
    if cfg.baseline == "rloo":
        adv, base = rloo_advantages(shaped, cfg.k), shaped.mean().item()
    elif cfg.baseline == "moving_average":
        base = state["baseline_mean"] if state["baseline_count"] else 0.0
        adv = shaped - base
        state["baseline_mean"], state["baseline_count"] = moving_average_update(
            state["baseline_mean"],
            state["baseline_count"],
            shaped if pooled is None else pooled,
            cfg.ema,
        )
    else:
        adv, base = shaped.clone(), 0.0
    if cfg.whiten_advantages:
        adv = whiten(adv)
    if cfg.uncertainty_scaling and std is not None:
        adv = adv / (1.0 + std)
    return adv, base


def evaluate_policy(
    policy, ref_model, tokenizer, prompts, reward, cfg: RLTrainConfig, pad_id: int
) -> dict[str, float]:
    """Mean reward and KL to the reference of one sampled reply per held-out prompt (fixed seed)."""
    ro = rollout(
        policy,
        tokenizer,
        prompts,
        cfg,
        seed=cfg.seed + 10_000,
        k=1,
    )
    reference = (
        _reference_distributions(policy, ref_model, tokenizer, reward, prompts, cfg)
        if reward.needs_reference
        else None
    )
    scores = reward(prompts, ro.texts, reference)
    ref_lp = reference_logprobs(policy, ref_model, ro, cfg, pad_id)
    kl = kl_estimates(ro.logps, ref_lp, ro.mask)
    result = {
        "reward": scores.rewards.mean().item(),
        "kl": kl["k1"].mean().item(),
        "length": ro.mask.sum(-1).mean().item(),
        "eos_rate": sum(ro.finished) / len(ro.finished),
    }
    if cfg.eval_prompts == "gold":  # the truth beside the optimised reward (never trained on)
        from distalign.gold.judge import judge

        result["gold_mean"] = float(
            judge([p[-1]["content"] for p in prompts], ro.texts)["gold_mean"].mean()
        )
    return result


def _reference_distributions(
    policy, ref_model, tokenizer, reward, prompts, cfg: RLTrainConfig
) -> torch.Tensor:
    """For the win-probability functional: the RM distribution of one SFT reply per prompt."""
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


def run(cfg: RLTrainConfig) -> dict[str, Any]:
    """Train; returns the final held-out evaluation. Writes output_dir/final (the policy)."""
    out = Path(cfg.output_dir)
    accelerator = Accelerator(
        log_with=None if cfg.tracker == "none" else cfg.tracker, project_dir=str(out)
    )
    set_seed(cfg.seed)
    if accelerator.is_main_process:
        save_config(cfg, out)
    policy, tokenizer = load_policy(cfg.model)
    ref_model = None
    if cfg.gradient_checkpointing:
        policy.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if cfg.lora:
        policy = _add_lora(policy, cfg)
    else:  # full fine-tune: the reference is a frozen copy of the SFT weights
        ref_model, _ = load_policy(cfg.model)
        ref_model.requires_grad_(False).eval().to(accelerator.device)
    reward = load_reward_source(
        cfg.reward,
        functional=cfg.functional,
        kappa=cfg.kappa,
        alpha=cfg.alpha,
        tau=cfg.tau,
        batch_size=cfg.reward_batch_size,
        device=accelerator.device,
    )
    train_prompts = load_prompts(cfg.prompts, cfg.prompts_split)
    eval_prompts = load_prompts(cfg.eval_prompts, cfg.eval_split)[: cfg.eval_count]
    if accelerator.num_processes > 1:  # each process works on its own, equal share of prompts
        n = accelerator.num_processes
        usable = len(train_prompts) - len(train_prompts) % n
        if usable == 0:
            raise ValueError(f"{len(train_prompts)} training prompts for {n} processes")
        if usable < len(train_prompts) and accelerator.is_main_process:
            log.warning(
                "%d prompt(s) left out so that every process has as many",
                len(train_prompts) - usable,
            )
        train_prompts = train_prompts[:usable][accelerator.process_index :: n]
    optimizer = torch.optim.AdamW([p for p in policy.parameters() if p.requires_grad], lr=cfg.lr)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: min(1.0, (s + 1) / (cfg.warmup_steps + 1))
    )
    # the teacher-forced pass as one module's forward, so DDP's gradient hooks and autocast
    # apply to it; sampling and saving use the policy inside
    learner, optimizer = accelerator.prepare(ReplyLogprobs(policy), optimizer)
    pad_id = tokenizer.pad_token_id

    def unwrapped():
        return accelerator.unwrap_model(learner).policy

    state: dict[str, Any] = {
        "step": 0,
        "baseline_mean": 0.0,
        "baseline_count": 0,
        "cursor": 0,
        "epoch": 0,
    }
    last = out / "checkpoints" / "last"
    if cfg.resume:  # an error when there is nothing to resume from
        state = load_checkpoint(resolve_resume(last), unwrapped(), optimizer, scheduler)
        log.info("resumed from %s at step %d", last, state["step"])
    if accelerator.is_main_process and cfg.tracker != "none":
        accelerator.init_trackers(
            "rl",
            config={
                k: v for k, v in cfg.__dict__.items() if isinstance(v, int | float | str | bool)
            },
        )
    metrics = MetricsLog(out / "metrics.jsonl", accelerator)
    history = out / "history.jsonl"

    def save_policy(model, folder: Path) -> None:  # loadable by path, like any model
        model.save_pretrained(folder, safe_serialization=True)
        tokenizer.save_pretrained(folder)

    def epoch_order(epoch: int) -> list[int]:
        order = list(range(len(train_prompts)))
        random.Random(cfg.seed + epoch).shuffle(order)  # a permutation per epoch
        return order

    def next_prompts() -> list:
        chosen, order = [], epoch_order(state["epoch"])
        while len(chosen) < cfg.prompts_per_step:
            if state["cursor"] >= len(train_prompts):
                state["epoch"] += 1
                state["cursor"] = 0
                order = epoch_order(state["epoch"])
            chosen.append(train_prompts[order[state["cursor"]]])
            state["cursor"] += 1
        return chosen

    def evaluate() -> dict[str, float]:
        result = evaluate_policy(
            unwrapped(),
            ref_model,
            tokenizer,
            eval_prompts,
            reward,
            cfg,
            pad_id,
        )
        metrics.write(state["step"], {f"eval/{k}": v for k, v in result.items()})
        state["last_eval"], state["last_eval_step"] = result, state["step"]
        return result

    if state["step"] == 0 and cfg.eval_at_start:
        state["initial_eval"] = evaluate()  # the SFT policy, for comparison
    bar = tqdm(
        total=cfg.steps,
        initial=state["step"],
        desc="rl train",
        disable=not accelerator.is_local_main_process,
    )
    while state["step"] < cfg.steps:
        t0 = time.perf_counter()
        prompts = next_prompts()
        inner = unwrapped()
        ro = rollout(inner, tokenizer, prompts, cfg, seed=cfg.seed * 1_000_003 + state["step"])
        t1 = time.perf_counter()
        reference = (
            _reference_distributions(inner, ref_model, tokenizer, reward, prompts, cfg)
            if reward.needs_reference
            else None
        )
        if reference is not None:
            reference = reference.repeat_interleave(cfg.k, 0)
        chats = [p for p in prompts for _ in range(cfg.k)]
        scored = reward(chats, ro.texts, reference)
        rewards = scored.rewards.to(ro.logps.device)
        std = scored.std.to(ro.logps.device) if scored.std is not None else None
        ref_lp = reference_logprobs(inner, ref_model, ro, cfg, pad_id)
        t2 = time.perf_counter()

        kl = kl_estimates(ro.logps, ref_lp, ro.mask)  # (B,) each
        shaped = rewards - cfg.beta * kl["k1"]
        cut = torch.tensor([not f for f in ro.finished], dtype=shaped.dtype, device=shaped.device)
        shaped = shaped - cfg.truncation_penalty * cut
        # the same baseline on every process (its cursor and epoch agree too), so the state
        # process 0 saves is every process's
        every_shaped = accelerator.gather(shaped) if cfg.baseline == "moving_average" else None
        adv, base = advantages_for(cfg, shaped, std, state, every_shaped)

        learner.train()
        n = len(prompts)
        entropy_sum, tokens = 0.0, 0
        for s in range(0, n, cfg.micro_batch_prompts):
            stop = min(n, s + cfg.micro_batch_prompts)
            ids, groups = ro.groups(s, stop)
            sync = stop >= n
            ctx = accelerator.no_sync(learner) if not sync else nullcontext()
            with ctx:
                lp, ent = learner(
                    ids, groups, pad_id, cfg.sampling.temperature or 1.0, cfg.prefix_sharing
                )
                lp_pad, mask = pad_reply_tensors(lp)
                rows = slice(s * cfg.k, stop * cfg.k)
                # reinforce_loss averages over this micro-batch; weight it by its share
                loss = reinforce_loss(lp_pad, mask, adv[rows]) * (stop - s) / n
                accelerator.backward(loss)
            entropy_sum += sum(e.sum().item() for e in ent)
            tokens += sum(e.numel() for e in ent)
        grad_norm = (
            accelerator.clip_grad_norm_(learner.parameters(), cfg.max_grad_norm)
            if cfg.max_grad_norm
            else None
        )
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad()
        t3 = time.perf_counter()
        state["step"] += 1

        lengths = ro.mask.sum(-1)
        means, (entropy_sum, tokens) = across_processes(
            accelerator,
            [
                scored.rewards.mean().item(),
                shaped.mean().item(),
                kl["k1"].mean().item(),
                kl["k3"].mean().item(),
                lengths.float().mean().item(),
                sum(ro.finished) / len(ro.finished),
            ],
            [entropy_sum, float(tokens)],
        )
        logged = {
            "train/reward": means[0],
            "train/shaped_reward": means[1],
            "train/kl": means[2],
            "train/kl_k3": means[3],
            "train/entropy": entropy_sum / max(tokens, 1),
            "train/length": means[4],
            "train/eos_rate": means[5],
            "train/baseline": base,
            "train/advantage_std": adv.std().item() if adv.numel() > 1 else 0.0,
            "train/grad_norm": float(grad_norm) if grad_norm is not None else 0.0,
            "train/gen_tokens_per_s": lengths.sum().item() / max(t1 - t0, 1e-9),
            "time/generate_s": t1 - t0,
            "time/score_s": t2 - t1,
            "time/train_s": t3 - t2,
            "train/peak_mem_gb": peak_memory_gb(),
        }
        metrics.write(state["step"], logged)
        rows = []
        for i, text in enumerate(ro.texts):
            row = {
                "step": state["step"], "prompt": ro.prompts[i // cfg.k], "reply": text,
                "reward": scored.rewards[i].item(), "shaped_reward": shaped[i].item(),
                "kl": kl["k1"][i].item(), "length": int(lengths[i].item()),
                "finished": ro.finished[i],
            }  # fmt: skip
            if scored.distributions is not None:
                row["distribution"] = [round(x, 5) for x in scored.distributions[i].tolist()]
            rows.append(row)
        if accelerator.num_processes > 1:  # every process's completions, written once
            rows = gather_object(rows)
        if accelerator.is_main_process:
            with history.open("a", encoding="utf-8") as f:
                f.writelines(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)
        bar.update(1)
        bar.set_postfix(
            reward=f"{logged['train/reward']:.3f}",
            kl=f"{logged['train/kl']:.2f}",
            len=f"{logged['train/length']:.0f}",
        )
        if cfg.eval_every and state["step"] % cfg.eval_every == 0:
            evaluate()
        if cfg.save_every and state["step"] % cfg.save_every == 0:
            accelerator.wait_for_everyone()
            if accelerator.is_main_process:
                save_checkpoint(last, unwrapped(), tokenizer, optimizer, scheduler, state)
                if cfg.keep_checkpoints:  # policy only: the points of the over-optimisation curve
                    save_policy(unwrapped(), out / "checkpoints" / f"step_{state['step']:05d}")
    bar.close()
    final = state["last_eval"] if state.get("last_eval_step") == state["step"] else evaluate()
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        inner = unwrapped()
        save_checkpoint(last, inner, tokenizer, optimizer, scheduler, state)
        save_policy(inner, out / "final")
        if cfg.lora and cfg.merge_lora:
            save_policy(inner.merge_and_unload(), out / "final_merged")
        summary = {
            "initial_eval": state.get("initial_eval"),
            "final_eval": final,
            "steps": state["step"],
        }
        (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    accelerator.end_training()
    return {"initial": state.get("initial_eval"), "final": final}
