"""Peak memory and time of one REINFORCE/RLOO step on the real SmolLM2, CPU.

    python benchmarks/rl_step_memory.py                     # 64, 128, 256 new tokens
    python benchmarks/rl_step_memory.py --tokens 64 --lora false

One step = 8 prompts × k = 4 samples = 32 completions: sampling (no grad, KV cache), reward
(the gold judge as a callable, so no reward model is needed), reference pass, and the
teacher-forced REINFORCE pass with gradients in micro-batches of ``--micro`` prompts (2).
Each setting runs in its own process, so its peak RSS is its own.
Writes results/rl_step_memory.json.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from child import report, run_child

HERE = Path(__file__).parent


def child(tokens: int, lora: bool, work: Path, micro: int) -> None:
    from distalign.rl.train import RLTrainConfig, run
    from distalign.tracking import peak_memory_gb, read_metrics

    out = work / f"rl_{tokens}_{'lora' if lora else 'full'}_mb{micro}"
    cfg = RLTrainConfig(
        reward="distalign.gold.judge:gold_reward",
        num_generations=4,
        per_device_train_batch_size=4 * micro,
        gradient_accumulation_steps=8 // micro,
        max_completion_length=tokens,
        temperature=1.0,
        sampling_batch_size=8,
        max_steps=1,
        use_peft=lora,
        eval_steps=0,
        eval_at_start=False,
        max_eval_samples=1,
        save_steps=0,
        report_to="none",
        output_dir=str(out),
    )
    run(cfg)
    m = next(r for r in read_metrics(out / "metrics.jsonl") if "train/reward" in r)
    result = {
        "max_new_tokens": tokens,
        "lora": lora,
        "completions": 32,
        "micro_batch_prompts": micro,
        "mean_reply_tokens": m["train/length"],
        "peak_rss_gb": peak_memory_gb(),
        "generate_s": m["time/generate_s"],
        "score_s": m["time/score_s"],
        "train_s": m["time/train_s"],
        "step_s": m["time/generate_s"] + m["time/score_s"] + m["time/train_s"],
    }
    report(result)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tokens", default="64,128,256")
    ap.add_argument("--lora", default="true")
    ap.add_argument("--work", type=Path, default=Path("runs/bench_rl"))
    ap.add_argument(
        "--micro", type=int, default=2, help="prompts (x k completions) per micro-batch"
    )
    ap.add_argument("--child", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--out", type=Path, default=HERE / "results" / "rl_step_memory.json")
    args = ap.parse_args()
    lora = args.lora.lower() == "true"
    if args.child:
        return child(args.child, lora, args.work, args.micro)
    results = []
    for tokens in [int(t) for t in args.tokens.split(",")]:
        cmd = [
            sys.executable,
            __file__,
            "--child",
            str(tokens),
            "--lora",
            args.lora,
            "--work",
            str(args.work),
            "--micro",
            str(args.micro),
        ]
        results.append(run_child(cmd, f"{tokens} tokens"))
        print(json.dumps(results[-1]), flush=True)
    reference = {
        "what": "TRL RLOOTrainer, 64 new tokens, as given in the issue (not re-measured here)",
        "micro_batch_32_gb": 14.2,
        "micro_batch_8_gb": 6.6,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    if args.micro != 2:
        args.out = args.out.with_name(f"rl_step_memory_mb{args.micro}.json")
    args.out.write_text(
        json.dumps({"results": results, "trl_reference": reference}, indent=2) + "\n"
    )


if __name__ == "__main__":
    main()
