"""How distalign's RL step time and peak memory scale with new tokens and with k.

    python benchmarks/rl_step_memory.py                         # tokens 64..512, k 2..8
    python benchmarks/rl_step_memory.py --tokens 64,256 --ks 4 --full
    python benchmarks/rl_step_memory.py --quick                 # tiny random model

The step is the one of ``rl_vs_trl.py`` (same prompts, same saved sequence-classification
reward model, β, sampling, micro-batches of 2 prompts × k completions, LoRA by default):
8 prompts × k samples. Two sweeps: max new tokens (64, 128, 256, 512) at k = 4, and k (2, 4, 8)
at 64 tokens; and 256 tokens again with gradient checkpointing and micro-batches of one
prompt (the memory-lean setting). Each
setting runs in its own process so that its peak RSS is its own, for
``--steps`` steps (default 1: the warm-up step is the measurement, which is what memory needs;
its time then includes first-step overheads). Writes results/rl_step_memory.json and the
plots results/rl_scaling_tokens.png, results/rl_scaling_k.png; says whether peak memory
grows about linearly (a least-squares line through the points, R²).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from common import environment, linear_fit, write_json
from rl_vs_trl import add_common_args, child_main, measure, prepare, settings


def plot(points: list[dict], key: str, xlabel: str, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    xs = [p[key] for p in points]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    ax1.plot(xs, [p["step_s"] for p in points], "o-", label="step")
    for part in ("generate", "reward", "reference", "train"):
        ax1.plot(xs, [p[f"{part}_s"] for p in points], ".--", label=part)
    ax1.set_xlabel(xlabel)
    ax1.set_ylabel("time per step (s)")
    ax1.legend()
    ax2.plot(xs, [p["peak_mem_gb"] for p in points], "o-")
    ax2.set_xlabel(xlabel)
    ax2.set_ylabel("peak memory (GB, RSS)")
    ax2.set_ylim(bottom=0)
    for ax in (ax1, ax2):
        ax.set_xticks(xs)
        ax.grid(alpha=0.3)
    fig.suptitle(title)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_common_args(ap, steps=1)
    ap.add_argument("--tokens", default="64,128,256,512", help="new-token sweep at k=4")
    ap.add_argument("--ks", default="2,4,8", help="k sweep at 64 tokens")
    ap.add_argument("--full", action="store_true", help="full fine-tune instead of LoRA")
    args = ap.parse_args()
    if args.child_settings:
        return child_main(args.child_settings)
    args.profile = False
    prepare(args, Path("runs/bench_rl_scaling"), "rl_step_memory.json")
    if args.quick:
        args.tokens, args.ks = "8,16,32", "2,4"
    lora = not args.full
    tokens = [int(t) for t in args.tokens.split(",")]
    ks = [int(k) for k in args.ks.split(",")]
    base_tokens = tokens[0]
    done: dict[tuple[int, int], dict] = {}

    def point(n_tokens: int, k: int) -> dict:
        if (n_tokens, k) not in done:
            s = settings(args, "distalign", lora, n_tokens, k, tag=f"_{n_tokens}t_k{k}")
            print(f"== {n_tokens} new tokens, k={k}", flush=True)
            r = done[(n_tokens, k)] = measure(s, __file__)
            print(
                f"   step {r['step_s']:.1f} s, peak {r['peak_mem_gb']:.2f} GB, "
                f"{r['mean_reply_tokens']:.0f} reply tokens",
                flush=True,
            )
        return done[(n_tokens, k)]

    by_tokens = [point(t, 4) for t in tokens]
    by_k = [point(base_tokens, k) for k in ks]
    # the memory-lean setting of the longest-but-one point: gradient checkpointing on, and
    # teacher-forced micro-batches of one prompt's k replies (the peak is in that pass)
    lean_tokens = tokens[-2] if len(tokens) > 1 else tokens[0]
    s = settings(args, "distalign", lora, lean_tokens, 4, tag=f"_{lean_tokens}t_k4_gc")
    print(f"== {lean_tokens} new tokens, k=4, gradient checkpointing, micro 1", flush=True)
    lean = measure({**s, "checkpointing": True, "micro": 1}, __file__)
    print(f"   step {lean['step_s']:.1f} s, peak {lean['peak_mem_gb']:.2f} GB", flush=True)
    mode = "LoRA" if lora else "full fine-tune"
    title = f"distalign RL step, {args.prompts} prompts"
    plot(by_tokens, "tokens", "max new tokens", args.out.with_name("rl_scaling_tokens.png"),
         f"{title} × k=4, {mode}")  # fmt: skip
    plot(by_k, "k", "samples per prompt k", args.out.with_name("rl_scaling_k.png"),
         f"{title}, {base_tokens} new tokens, {mode}")  # fmt: skip
    summary = {
        "model": args.model,
        "quick": args.quick,
        "device": args.device,
        "precision": "bf16 mixed" if args.bf16 else "float32",
        **environment(),
        "settings": {
            "prompts_per_step": args.prompts,
            "lora": lora,
            "steps": args.steps,
            "micro_batch_prompts": args.micro,
        },
        "by_tokens": by_tokens,
        "by_k": by_k,
        "checkpointing": lean,
        "memory_fit_tokens": linear_fit(
            [p["tokens"] for p in by_tokens], [p["peak_mem_gb"] for p in by_tokens]
        ),
        "memory_fit_k": linear_fit([p["k"] for p in by_k], [p["peak_mem_gb"] for p in by_k]),
        # generated tokens per step is what memory follows (replies may end early): mean
        # reply tokens × completions (prompts × k)
        "memory_fit_generated": linear_fit(
            [p["mean_reply_tokens"] * p["k"] * p["prompts"] for p in done.values()],
            [p["peak_mem_gb"] for p in done.values()],
        ),
    }
    write_json(args.out, summary)
    print(json.dumps({k: summary[k] for k in summary if k.startswith("memory_fit")}, indent=2))


if __name__ == "__main__":
    main()
