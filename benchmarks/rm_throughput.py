"""Reward-model training throughput and peak memory: distalign vs TRL's RewardTrainer.

    python benchmarks/rm_throughput.py        # all variants -> results/rm_throughput.json
    python benchmarks/rm_throughput.py --pairs 48 --steps 6

Same machine, same run, same pairs (the first pairs of the shipped gold benchmark whose
prompt + reply fit ``--max-length`` for both replies, so neither tool truncates or drops any),
same model (SmolLM2-135M-Instruct, full fine-tune, fp32, no gradient checkpointing),
8 pairs per optimizer step. Each variant runs in its own process so that its peak RSS is its
own. Throughput excludes the first step (warm-up): pairs / seconds over steps 2..N.

Needs TRL: ``pip install -e ".[bench]"`` (the version measured; not a dependency of distalign).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

from child import report, run_child

HERE = Path(__file__).parent
VARIANTS = {
    "trl": "TRL RewardTrainer (defaults)",
    "plain": "distalign, prefix sharing off",
    "shared": "distalign, prefix sharing (default)",
    "packed": "distalign, prefix sharing + packing",
}


def select_pairs(n: int, max_length: int, model: str) -> list[dict]:
    from distalign.data.load import load_preferences
    from distalign.data.pairs import render_prompt_ids, render_reply_ids
    from distalign.models.load import load_tokenizer

    tok = load_tokenizer(model)
    rows = []
    for row in load_preferences("gold", "train"):
        p = len(render_prompt_ids(tok, row["prompt"]))
        c = len(render_reply_ids(tok, row["prompt"], row["chosen"]))
        r = len(render_reply_ids(tok, row["prompt"], row["rejected"]))
        if p + max(c, r) <= max_length - 2:
            rows.append(
                {
                    "prompt": row["prompt"],
                    "chosen": row["chosen"],
                    "rejected": row["rejected"],
                    "tokens": p + c + p + r,
                }
            )
        if len(rows) == n:
            return rows
    raise SystemExit(f"only {len(rows)} pairs fit {max_length} tokens")


def run_trl(pairs, args) -> dict:
    import datasets
    from transformers import AutoModelForSequenceClassification, TrainerCallback
    from trl import RewardConfig, RewardTrainer

    from distalign.models.load import load_tokenizer, resolve_model
    from distalign.tracking import peak_memory_gb

    tok = load_tokenizer(args.model)
    model = AutoModelForSequenceClassification.from_pretrained(
        resolve_model(args.model), num_labels=1
    )
    model.config.pad_token_id = tok.pad_token_id
    ds = datasets.Dataset.from_list(
        [
            {
                "prompt": p["prompt"],
                "chosen": [{"role": "assistant", "content": p["chosen"]}],
                "rejected": [{"role": "assistant", "content": p["rejected"]}],
            }
            for p in pairs
        ]
    )
    stamps = []

    class Stamp(TrainerCallback):
        def on_step_end(self, *a, **k):
            stamps.append(time.perf_counter())

    config = RewardConfig(
        output_dir=str(args.work / "trl"),
        per_device_train_batch_size=8,
        max_steps=args.steps,
        max_length=args.max_length,
        learning_rate=1e-5,
        report_to="none",
        save_strategy="no",
        logging_steps=1,
        use_cpu=True,
        bf16=False,
        gradient_checkpointing=False,
        center_rewards_coefficient=0.01,
        dataloader_num_workers=0,
        seed=0,
    )
    trainer = RewardTrainer(
        model=model, args=config, train_dataset=ds, processing_class=tok, callbacks=[Stamp()]
    )
    trainer.train()
    return {"step_end_times": stamps, "pairs_per_step": 8, "peak_mem_gb": peak_memory_gb()}


def run_distalign(pairs, args, variant) -> dict:
    from distalign.rm.train import RMTrainConfig, run
    from distalign.tracking import peak_memory_gb, read_metrics

    data = args.work / "pairs"
    data.mkdir(parents=True, exist_ok=True)
    for split in ("train", "test"):
        with open(data / f"{split}.jsonl", "w") as f:
            for p in pairs if split == "train" else pairs[:8]:
                f.write(json.dumps({k: p[k] for k in ("prompt", "chosen", "rejected")}) + "\n")
    out = args.work / variant
    cfg = RMTrainConfig(
        model_name_or_path=args.model,
        dataset_name=str(data),
        max_length=args.max_length,
        max_prompt_length=args.max_length // 2,
        per_device_train_batch_size=8,
        max_steps=args.steps,
        learning_rate=1e-5,
        eval_steps=0,
        save_steps=0,
        report_to="none",
        output_dir=str(out),
        prefix_sharing=variant != "plain",
        packing=variant == "packed",
        center_rewards_coefficient=0.01,
    )
    run(cfg)
    logs = [r for r in read_metrics(out / "metrics.jsonl") if "train/elapsed_s" in r]
    return {
        "step_end_times": [r["train/elapsed_s"] for r in logs],
        "pairs_per_step": 8,
        "peak_mem_gb": peak_memory_gb(),
        "train_accuracy_last": logs[-1]["train/accuracy"],
    }


def child(args) -> None:
    pairs = json.loads((args.work / "pairs.json").read_text())
    result = (
        run_trl(pairs, args) if args.variant == "trl" else run_distalign(pairs, args, args.variant)
    )
    t = result["step_end_times"]
    result["pairs_per_s"] = result["pairs_per_step"] * (len(t) - 1) / (t[-1] - t[0])
    report(result)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--pairs", type=int, default=64)
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--max-length", type=int, default=256)
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--variants", default=",".join(VARIANTS))
    ap.add_argument("--work", type=Path, default=Path("runs/bench_rm"))
    ap.add_argument("--variant", help=argparse.SUPPRESS)
    ap.add_argument("--out", type=Path, default=HERE / "results" / "rm_throughput.json")
    args = ap.parse_args()
    if args.variant:
        return child(args)
    args.work.mkdir(parents=True, exist_ok=True)
    pairs = select_pairs(args.steps * 8, args.max_length, args.model)
    (args.work / "pairs.json").write_text(json.dumps(pairs))
    results = {}
    for variant in args.variants.split(","):
        cmd = [
            sys.executable,
            __file__,
            "--variant",
            variant,
            "--work",
            str(args.work),
            "--steps",
            str(args.steps),
            "--max-length",
            str(args.max_length),
            "--model",
            args.model,
        ]
        print(f"== {variant}: {VARIANTS[variant]}", flush=True)
        results[variant] = run_child(cmd, variant)
        r = results[variant]
        print(f"   {r['pairs_per_s']:.3f} pairs/s, peak {r['peak_mem_gb']:.2f} GB", flush=True)
    base = results.get("trl")
    summary = {
        "settings": {
            "model": args.model,
            "pairs_per_step": 8,
            "steps": args.steps,
            "max_length": args.max_length,
            "dtype": "float32",
            "full_finetune": True,
            "gradient_checkpointing": False,
            "mean_tokens_per_pair_unshared": sum(p["tokens"] for p in pairs) / len(pairs),
        },
        "machine": {
            "cpu_count": os.cpu_count(),
            "platform": platform.platform(),
            "python": platform.python_version(),
        },
        "results": {
            v: {
                "what": VARIANTS[v],
                "pairs_per_s": r["pairs_per_s"],
                "peak_mem_gb": r["peak_mem_gb"],
                "speedup_vs_trl": r["pairs_per_s"] / base["pairs_per_s"] if base else None,
                "memory_vs_trl": r["peak_mem_gb"] / base["peak_mem_gb"] if base else None,
            }
            for v, r in results.items()
        },
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(summary, indent=2) + "\n")
    print(json.dumps(summary["results"], indent=2))


if __name__ == "__main__":
    main()
