"""One RLOO step, distalign vs TRL's RLOOTrainer: completions/s, where the step's time goes,
peak memory; full fine-tune and LoRA.

    python benchmarks/rl_vs_trl.py                      # full + LoRA, both tools
    python benchmarks/rl_vs_trl.py --modes lora --steps 4 --profile
    python benchmarks/rl_vs_trl.py --quick              # tiny random model, seconds

Both tools run on the same device (``--device``: the CPU, or one GPU) with the same policy
(SmolLM2-135M-Instruct, fp32; ``--bf16``: fp32 weights under bfloat16 autocast in both, and
then distalign, as in ``rl train``, loads the frozen reward model in bfloat16 where TRL keeps
it in fp32 under autocast), the same prompts (the first
``prompts × steps`` gold training prompts, conversational), the same reward model (ONE saved
sequence-classification folder: the policy's backbone + a random 1-label head, which both read
with their own loaders), and the same step: 8 prompts × k = 4 samples = 32 completions,
64 new tokens at most, temperature 1, top_p 1, top_k 0, β = 0.05, one optimizer step per
generation batch (TRL: num_iterations = 1), learning rate 1e-5, clipping at 1.0.

Micro-batches (the fairest match the two APIs allow): the 32 completions are sampled as one
batch by both (TRL: generation_batch_size = 32; distalign: sampling_batch_size = 8 prompts,
each expanded to k rows); the teacher-forced passes run on 8 completions at a time (TRL:
per_device_train_batch_size = 8 with 4 accumulation steps, also the batch of its no-grad
log-prob passes; distalign: per_device_train_batch_size = 8 = 2 prompts × k, 4 accumulation
steps). The reward model scores TRL's 32 replies in one batch, distalign's in its default
batches of 16 (length-sorted). LoRA: r = 16, α = 32, dropout 0, all linear layers but the
LM head, in both.

Step time is the wall time between the ends of consecutive optimizer steps, over steps 2..N
(step 1 is the warm-up). Its parts: distalign logs generate / score (+reference) / train
times and this script times the reward model and the reference pass apart by wrapping
``distalign.rl.train.score`` and ``reference_logprobs``; TRL's parts are timed by wrapping its
``_generate``, ``_calculate_rewards``, no-grad ``_get_per_token_logps_and_entropies`` (TRL
computes the policy's own log-probs again, then the reference's: both counted as
"reference") and ``training_step`` (less the generation it triggers). ``--profile`` records
the last step of each run with torch.profiler (that step is left out of the timings) and
writes the top operators by self CPU time to ``profile_rl_<tool>_<mode>.txt`` beside the
results JSON (on a GPU too: the table is a CPU profile, and says nothing of the kernels' time).
"""

from __future__ import annotations

import argparse
import inspect
import json
import shutil
import statistics
import sys
import time
from collections import defaultdict
from contextlib import contextmanager
from pathlib import Path

from child import report, run_child
from common import (
    DEFAULT_MODEL,
    TINY,
    add_device_args,
    child_env,
    environment,
    policy_path,
    profile_table,
    resolve_bench_device,
    results_dir,
    reward_model_folder,
    write_json,
)

PARTS = ("generate", "reward", "reference", "train")


def write_prompts(folder: Path, n: int) -> Path:
    """The first ``n`` gold training prompts as a prompt-only data set both tools read."""
    from distalign.data.prompts import load_prompts

    prompts = load_prompts("gold", "train")[:n]
    folder.mkdir(parents=True, exist_ok=True)
    for split, rows in (("train", prompts), ("test", prompts[:1])):
        with open(folder / f"{split}.jsonl", "w") as f:
            f.writelines(json.dumps({"prompt": list(p)}) + "\n" for p in rows)
    return folder


def read_prompts(folder: Path) -> list:
    lines = (folder / "train.jsonl").read_text().splitlines()
    return [json.loads(line)["prompt"] for line in lines]


class Timers:
    """Seconds per named part, accumulated over one step, then moved to ``steps``."""

    def __init__(self):
        self.now: dict[str, float] = defaultdict(float)
        self.steps: list[dict[str, float]] = []
        self.stamps: list[float] = []

    @contextmanager
    def part(self, name: str):
        t = time.perf_counter()
        try:
            yield
        finally:
            self.now[name] += time.perf_counter() - t

    def end_step(self, **extra) -> None:
        self.stamps.append(time.perf_counter())
        self.steps.append({**self.now, **extra})
        self.now = defaultdict(float)


class StepProfiler:
    """torch.profiler over the last optimizer step of a run only; the timings leave that step
    out (the profiler slows it down)."""

    def __init__(self, path: Path | None, steps: int):
        self.path, self.steps, self.prof = path, steps, None
        self.peak_before_gb: float | None = None  # the peak of the unprofiled steps

    def after_step(self, step: int) -> None:
        if self.path is None:
            return
        import torch.profiler as tp

        from distalign.tracking import peak_memory_gb

        if step == self.steps - 1:
            self.peak_before_gb = peak_memory_gb()  # the profiler's own memory is not the tool's
            self.prof = tp.profile(activities=[tp.ProfilerActivity.CPU])
            self.prof.start()
        elif step == self.steps and self.prof is not None:
            self.prof.stop()
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.path.write_text(profile_table(self.prof) + "\n")
            self.prof = None


def summarize(timers: Timers, completions: int, peak_gb: float, profiler: StepProfiler) -> dict:
    """Means over steps 2..N of each part, the step time and completions/s, and the peak memory
    (N: the last step not profiled; the profiled step's time and memory are left out)."""
    steps, stamps = timers.steps, timers.stamps
    profiled = profiler.peak_before_gb is not None
    if profiled:
        steps, stamps = steps[:-1], stamps[:-1]
        peak_gb = profiler.peak_before_gb
    later = steps[1:] or steps
    parts = {f"{p}_s": statistics.mean(s.get(p, 0.0) for s in later) for p in PARTS}
    if len(stamps) > 1:
        step_s = (stamps[-1] - stamps[0]) / (len(stamps) - 1)
    else:  # a single step: its parts (the warm-up included)
        step_s = sum(parts.values())
    return {
        "steps": len(stamps),
        "step_s": step_s,
        **parts,
        "other_s": step_s - sum(parts.values()),
        "completions_per_s": completions / step_s,
        "mean_reply_tokens": statistics.mean(s["reply_tokens"] for s in later),
        "prompt_tokens_per_step": statistics.mean(s["prompt_tokens"] for s in later),
        "generated_tokens_per_s": statistics.mean(
            s["reply_tokens"] * completions / max(s.get("generate", 0.0), 1e-9) for s in later
        ),
        "peak_mem_gb": peak_gb,
    }


def shared_keys(s: dict) -> dict:
    """The keys both tools take under the same TRL names: the step being compared."""
    k, micro = s["k"], s["micro"]
    return {
        "output_dir": s["out"],
        "num_generations": k,
        "per_device_train_batch_size": k * micro,
        "gradient_accumulation_steps": s["prompts"] // micro,
        "max_completion_length": s["tokens"],
        "temperature": 1.0,
        "top_p": 1.0,
        "top_k": 0,
        "beta": 0.05,
        "learning_rate": 1e-5,
        "max_grad_norm": 1.0,
        "max_steps": s["steps"],
        "report_to": "none",
        "seed": 0,
        "bf16": s.get("bf16", False),
    }


def run_distalign(s: dict) -> dict:
    """One distalign run; ``s``: the settings (see ``settings``)."""
    import distalign.rl.train as rl
    from distalign.rl.config import RLTrainConfig
    from distalign.tracking import peak_memory_gb

    timers, profiler = Timers(), StepProfiler(s["profile"] and Path(s["profile"]), s["steps"])
    score, reference, log_step = rl.score, rl.reference_logprobs, rl.log_step

    def timed_score(*a, **k):
        with timers.part("reward"):
            return score(*a, **k)

    def timed_reference(*a, **k):
        with timers.part("reference"):
            return reference(*a, **k)

    def stamped_log_step(*a, **k):
        # by name, whatever else the training loop passes its logger
        args = inspect.signature(log_step).bind(*a, **k).arguments
        t0, t1, t2, t3 = args["times"]
        timers.now["generate"] += t1 - t0
        timers.now["train"] += t3 - t2
        out = log_step(*a, **k)
        ro = args["ro"]
        prompt_tokens = sum(len(ids) for ids in ro.prompt_ids)
        timers.end_step(
            reply_tokens=ro.mask.sum(-1).float().mean().item(), prompt_tokens=prompt_tokens
        )
        profiler.after_step(args["state"].step)
        return out

    rl.score, rl.reference_logprobs, rl.log_step = timed_score, timed_reference, stamped_log_step
    cfg = RLTrainConfig(
        **shared_keys(s),
        model_name_or_path=s["model_path"],
        reward=s["reward"],
        dataset_name=s["prompts_dir"],
        sampling_batch_size=s["prompts"],
        use_peft=s["lora"],
        gradient_checkpointing=s.get("checkpointing", False),
        lora_r=16,
        lora_alpha=32,
        lora_dropout=0.0,
        eval_steps=0,
        eval_on_start=False,
        max_eval_samples=1,
        save_steps=0,
    )
    rl.run(cfg)
    return summarize(timers, s["prompts"] * s["k"], peak_memory_gb(), profiler)


def run_trl(s: dict) -> dict:
    import datasets
    import torch
    from transformers import TrainerCallback
    from trl import RLOOConfig, RLOOTrainer

    from distalign.models.load import load_tokenizer
    from distalign.tracking import peak_memory_gb

    timers, profiler = Timers(), StepProfiler(s["profile"] and Path(s["profile"]), s["steps"])
    counts = {}

    class TimedRLOO(RLOOTrainer):
        def _generate(self, prompts):
            with timers.part("generate"):
                out = super()._generate(prompts)
            prompt_ids, completion_ids = out[0], out[1]
            counts["reply_tokens"] = statistics.mean(len(c) for c in completion_ids)
            # one prompt row per completion: count each prompt once
            counts["prompt_tokens"] = sum(len(p) for p in prompt_ids) / s["k"]
            return out

        def _calculate_rewards(self, *a, **k):
            with timers.part("reward"):
                return super()._calculate_rewards(*a, **k)

        def _get_per_token_logps_and_entropies(self, *a, **k):
            with timers.part("train_forward" if torch.is_grad_enabled() else "reference"):
                return super()._get_per_token_logps_and_entropies(*a, **k)

        def _prepare_inputs(self, *a, **k):
            with timers.part("prepare"):
                return super()._prepare_inputs(*a, **k)

        def training_step(self, *a, **k):
            with timers.part("training_step"):
                return super().training_step(*a, **k)

    class Stamp(TrainerCallback):
        def on_step_end(self, args, state, control, **kw):
            now = timers.now
            now["train"] = now.get("training_step", 0.0) - now.get("prepare", 0.0)
            timers.end_step(**counts)
            profiler.after_step(state.global_step)

    tok = load_tokenizer(s["model_path"])
    ds = datasets.Dataset.from_list([{"prompt": p} for p in read_prompts(Path(s["prompts_dir"]))])
    peft_config = None
    if s["lora"]:
        from peft import LoraConfig

        peft_config = LoraConfig(
            r=16,
            lora_alpha=32,
            lora_dropout=0.0,
            target_modules="all-linear",
            task_type="CAUSAL_LM",
        )
    config = RLOOConfig(
        **shared_keys(s),
        num_iterations=1,
        shuffle_dataset=False,
        logging_steps=1,
        save_strategy="no",
        use_cpu=s.get("device", "cpu") == "cpu",  # where distalign runs too
        gradient_checkpointing=False,
        dataloader_num_workers=0,
        log_completions=False,
        model_init_kwargs={"dtype": "float32"},
    )
    trainer = TimedRLOO(
        model=s["model_path"],
        reward_funcs=s["reward"],
        args=config,
        train_dataset=ds,
        processing_class=tok,
        peft_config=peft_config,
        callbacks=[Stamp()],
    )
    trainer.train()
    return summarize(timers, s["prompts"] * s["k"], peak_memory_gb(), profiler)


def settings(args, tool: str, lora: bool, tokens: int, k: int, tag: str = "") -> dict:
    mode = "lora" if lora else "full"
    name = f"{tool}_{mode}{tag}"
    return {
        "tool": tool,
        "lora": lora,
        "tokens": tokens,
        "k": k,
        "prompts": args.prompts,
        "micro": args.micro,
        "steps": args.steps,
        "model_path": args.model_path,
        "reward": args.reward,
        "prompts_dir": str(args.prompts_dir),
        "out": str(args.work / name),
        "profile": str(args.out.parent / f"profile_rl_{name}.txt") if args.profile else None,
        "checkpointing": False,
        "device": args.device,
        "bf16": args.bf16,
    }


def measure(s: dict, script: str = __file__) -> dict:
    """Run one setting in its own process (its peak RSS its own)."""
    cmd = [sys.executable, script, "--child-settings", json.dumps(s)]
    what = f"{s['tool']} {'lora' if s['lora'] else 'full'} {s['tokens']} tokens"
    return run_child(cmd, what, child_env(s["device"]))


def child_main(raw: str) -> None:
    s = json.loads(raw)
    shutil.rmtree(s["out"], ignore_errors=True)  # a fresh run, never a resumed one
    result = run_trl(s) if s["tool"] == "trl" else run_distalign(s)
    keys = ("tool", "lora", "tokens", "k", "prompts", "micro", "checkpointing")
    shutil.rmtree(s["out"], ignore_errors=True)  # the trained policy is not needed
    report({**{k: s.get(k) for k in keys}, **result})


def add_common_args(ap: argparse.ArgumentParser, steps: int) -> None:
    ap.add_argument("--model", default=DEFAULT_MODEL, help=f"alias, folder, or {TINY}")
    ap.add_argument("--prompts", type=int, default=8, help="prompts per step")
    ap.add_argument("--micro", type=int, default=2, help="prompts (× k) per micro-batch")
    ap.add_argument("--steps", type=int, default=steps, help="steps per run (1st: warm-up)")
    ap.add_argument("--quick", action="store_true", help="tiny random model, 2 steps")
    add_device_args(ap)
    ap.add_argument("--out", type=Path, help="results JSON (default: under results/)")
    ap.add_argument("--child-settings", help=argparse.SUPPRESS)


def prepare(args, work: Path, name: str) -> None:
    """--quick, the device, the results file (``--out``, else ``name`` in ``results_dir``),
    the model, the reward-model folder and the prompts, shared by both scripts."""
    args.device = resolve_bench_device(args.device)
    if args.quick:
        args.model, args.steps = TINY, min(args.steps, 2 + bool(getattr(args, "profile", 0)))
        work = work.with_name(work.name + "_quick")
    args.work = work
    args.out = args.out or results_dir(args.quick, args.device) / name
    work.mkdir(parents=True, exist_ok=True)
    args.model_path = policy_path(args.model, work)
    args.reward = reward_model_folder(args.model, work)
    args.prompts_dir = write_prompts(work / "prompts", args.prompts * args.steps)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_common_args(ap, steps=3)
    ap.add_argument("--modes", default="full,lora")
    ap.add_argument("--tools", default="trl,distalign")
    ap.add_argument("--tokens", type=int, default=64, help="max new tokens")
    ap.add_argument("--k", type=int, default=4, help="samples per prompt")
    ap.add_argument(
        "--profile", action="store_true", help="torch.profiler over one more, last step"
    )
    args = ap.parse_args()
    if args.child_settings:
        return child_main(args.child_settings)
    if args.profile:  # one more step, profiled and left out of the timings
        args.steps += 1
    prepare(args, Path("runs/bench_rl_vs_trl"), "rl_vs_trl.json")
    if args.quick:
        args.tokens = min(args.tokens, 16)
    runs = {}
    for mode in args.modes.split(","):
        for tool in args.tools.split(","):
            s = settings(args, tool, mode == "lora", args.tokens, args.k)
            print(f"== {tool} {mode}: {args.prompts} prompts × k={args.k}, {args.tokens} tokens")
            r = runs[f"{tool}_{mode}"] = measure(s)
            print(
                f"   {r['completions_per_s']:.3f} completions/s, step {r['step_s']:.1f} s "
                f"(generate {r['generate_s']:.1f}, reward {r['reward_s']:.1f}, reference "
                f"{r['reference_s']:.1f}, train {r['train_s']:.1f}), "
                f"peak {r['peak_mem_gb']:.2f} GB",
                flush=True,
            )
    for mode in args.modes.split(","):
        d, t = runs.get(f"distalign_{mode}"), runs.get(f"trl_{mode}")
        if d and t:
            d["speedup_vs_trl"] = d["completions_per_s"] / t["completions_per_s"]
            d["memory_vs_trl"] = d["peak_mem_gb"] / t["peak_mem_gb"]
    summary = {
        "model": args.model,
        "quick": args.quick,
        "device": args.device,
        "precision": "bf16 mixed" if args.bf16 else "float32",
        **environment(),
        "settings": {
            "prompts_per_step": args.prompts,
            "k": args.k,
            "completions_per_step": args.prompts * args.k,
            "max_new_tokens": args.tokens,
            "micro_batch_completions": args.micro * args.k,
            "steps": args.steps,
            "beta": 0.05,
            "temperature": 1.0,
            "top_p": 1.0,
            "lora": {"r": 16, "alpha": 32, "dropout": 0.0, "target_modules": "all-linear"},
            "reward_model": "one saved 1-label sequence classifier (policy backbone, random head)",
        },
        "runs": runs,
    }
    write_json(args.out, summary)
    print(json.dumps(runs, indent=2))


if __name__ == "__main__":
    main()
