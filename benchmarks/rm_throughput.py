"""Reward-model training throughput and peak memory: distalign vs TRL's RewardTrainer.

    python benchmarks/rm_throughput.py                       # both workloads, all variants
    python benchmarks/rm_throughput.py --workloads multiturn --steps 6
    python benchmarks/rm_throughput.py --quick               # tiny random model, seconds

Two workloads, each run by every variant on the same machine in the same run:

* ``gold``: pairs of the shipped gold benchmark (short single-turn prompts) whose prompt +
  longer reply fit ``--max-length``, drawn at random (seed 0) from all 2,400, so that pairs
  of one prompt rarely meet in a batch, as in training on the whole set;
* ``gold_by_prompt``: the first such pairs in file order: all 10 pairs of each prompt (its 5
  replies) together, the case ``group_by_prompt`` is for;
* ``multiturn``: chat pairs shaped like real preference data: each prompt is a conversation
  whose earlier turns are other benchmark prompts with (shortened) benchmark replies, grown
  until it reaches a drawn target (median about 120 tokens); the chosen and rejected replies
  are benchmark replies cut to 30-40 tokens at a word boundary. ``max_length`` is chosen to
  fit the longest pair, so neither tool truncates or drops anything (checked: TRL filters
  longer pairs, and the script fails if it kept fewer than it was given).

Both tools get identical conversational rows (message lists), the same model (full fine-tune,
fp32, no gradient checkpointing), 8 pairs per optimizer step, learning rate and steps, on the
same device (``--device``: the CPU, or one GPU) in the same precision (``--bf16``: bfloat16
mixed precision, fp32 weights). Each variant runs in its own process so that its peak memory
(RSS on the CPU, the CUDA allocator's peak on a GPU) is its own. Throughput excludes the
first step (warm-up): pairs / seconds over steps 2..N; tokens/s counts the real (non-pad)
tokens of prompt + chosen and prompt + rejected, as both tools are given them (one number per
pair, the same for both tools, so the ratio of tokens/s equals the ratio of pairs/s).

Needs TRL: ``pip install -e ".[bench]"`` (the version measured; not a dependency of distalign).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import random
import shutil
import statistics
import sys
import time
from pathlib import Path

from child import report, run_child
from common import (
    DEFAULT_MODEL,
    TINY,
    add_device_args,
    child_env,
    environment,
    policy_path,
    rate,
    resolve_bench_device,
    results_dir,
    write_json,
)

VARIANTS = {
    "trl": "TRL RewardTrainer (defaults)",
    "trl_grouped": "TRL RewardTrainer, batches grouped by length (train_sampling_strategy)",
    "plain": "distalign, prefix sharing off",
    "shared": "distalign, prefix sharing (default)",
    "packed": "distalign, prefix sharing + packing",
    "grouped": "distalign, prefix sharing + pairs grouped by prompt (opt-in)",
}
WORKLOADS = ("gold", "gold_by_prompt", "multiturn")
PAIRS_PER_STEP = 8


def _lengths(tok, prompt, chosen, rejected) -> tuple[int, int, int]:
    from distalign.data.pairs import render_pair_ids

    prompt_ids, (chosen_ids, rejected_ids) = render_pair_ids(tok, prompt, (chosen, rejected))
    return len(prompt_ids), len(chosen_ids), len(rejected_ids)


def _row(prompt, chosen, rejected, lengths) -> dict:
    p, c, r = lengths
    return {
        "prompt": prompt,
        "chosen": chosen,
        "rejected": rejected,
        "prompt_tokens": p,
        "tokens": p + c + p + r,  # both sequences, as TRL reads them
        "tokens_shared": p + c + r,  # the prompt once, as prefix sharing reads them
        "chosen_tokens": c,
        "rejected_tokens": r,
        "longest": p + max(c, r),
    }


def grouped_tokens_per_pair(pairs: list[dict], seed: int = 0) -> float:
    """Tokens per pair the ``grouped`` variant runs: its batches (``group_by_prompt``, as
    ``rm train`` draws them for epoch 0) encode each distinct prompt and reply once."""
    from distalign.data.pairs import prompt_grouped_batches

    keys = [json.dumps(p["prompt"]) for p in pairs]
    total = 0
    for batch in prompt_grouped_batches(keys, PAIRS_PER_STEP, seed=seed):
        seen: set = set()
        for i in batch:
            p = pairs[i]
            for item, n in (((keys[i],), p["prompt_tokens"]),
                            ((keys[i], p["chosen"]), p["chosen_tokens"]),
                            ((keys[i], p["rejected"]), p["rejected_tokens"])):  # fmt: skip
                if item not in seen:
                    seen.add(item)
                    total += n
    return total / len(pairs)


def gold_pairs(n: int, max_length: int, tok, by_prompt: bool = False) -> list[dict]:
    """``n`` gold training pairs whose prompt + longer reply fit ``max_length``: drawn at random
    (seed 0) from all of them, so a batch rarely holds two pairs of one prompt, as in training
    on the whole set with random batches; ``by_prompt``: the first ones in file order, all 10
    pairs of each prompt (5 replies) together, where a prompt's pairs share replies."""
    from distalign.data.load import load_preferences

    rows = []
    for row in load_preferences("gold", "train"):
        lengths = _lengths(tok, row["prompt"], row["chosen"], row["rejected"])
        if lengths[0] + max(lengths[1:]) <= max_length - 2:
            rows.append(_row(row["prompt"], row["chosen"], row["rejected"], lengths))
        if by_prompt and len(rows) == n:
            return rows
    if len(rows) < n or by_prompt:
        raise SystemExit(f"only {len(rows)} gold pairs fit {max_length} tokens")
    return random.Random(0).sample(rows, n)


def cut_words(tok, text: str, target: int) -> str:
    """The shortest word prefix of ``text`` with at least ``target`` tokens (all of it if
    shorter)."""
    words, out = text.split(" "), []
    for w in words:
        out.append(w)
        if len(tok(" ".join(out), add_special_tokens=False)["input_ids"]) >= target:
            break
    return " ".join(out)


def multiturn_pairs(n: int, tok, seed: int = 0) -> list[dict]:
    """Conversations built from the benchmark's own prompts and replies (see the module doc)."""
    from distalign.data.load import load_preferences

    rng = random.Random(seed)
    pool = list(load_preferences("gold", "train"))
    rows = []
    for i in range(n):
        last = pool[i]
        prompt, before = [], 0
        target = rng.randint(70, 170)  # prompt tokens, the closest whole number of turns
        j = i + 1
        while True:
            turn = pool[(j * 7919) % len(pool)]  # earlier turns: other rows, spread out
            j += 1
            earlier = [
                {"role": "user", "content": turn["prompt"][-1]["content"]},
                {
                    "role": "assistant",
                    "content": cut_words(tok, turn["chosen"], rng.randint(15, 50)),
                },
            ]
            p = _lengths(tok, [*earlier, *prompt, *last["prompt"]], "x", "x")[0]
            if p >= target:
                if p - target < target - before:
                    prompt = earlier + prompt
                break
            prompt, before = earlier + prompt, p
        final = [*prompt, *last["prompt"]]
        chosen = cut_words(tok, last["chosen"], rng.randint(30, 40))
        rejected = cut_words(tok, last["rejected"], rng.randint(30, 40))
        rows.append(_row(final, chosen, rejected, _lengths(tok, final, chosen, rejected)))
    return rows


def fitting_max_length(pairs: list[dict]) -> int:
    """The smallest multiple of 64 that holds every pair with room to spare."""
    longest = max(p["longest"] for p in pairs) + 2
    return -(-longest // 64) * 64


def _grouped_batches(config_class) -> dict:
    """transformers' length-grouped batches: 5's ``train_sampling_strategy``, 4's flag."""
    names = {f.name for f in dataclasses.fields(config_class)}
    if "train_sampling_strategy" in names:
        return {"train_sampling_strategy": "group_by_length"}
    return {"group_by_length": True}


def run_trl(pairs, args, grouped: bool = False) -> dict:
    """TRL's RewardTrainer on the pairs; ``grouped``: with transformers' length-grouped batches
    (``train_sampling_strategy="group_by_length"``), the counterpart of distalign's default."""
    import datasets
    from transformers import AutoModelForSequenceClassification, TrainerCallback
    from trl import RewardConfig, RewardTrainer

    from distalign.models.load import load_tokenizer
    from distalign.tracking import peak_memory_gb

    tok = load_tokenizer(args.model_path)
    model = AutoModelForSequenceClassification.from_pretrained(args.model_path, num_labels=1)
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
        output_dir=str(args.work / ("trl_grouped" if grouped else "trl")),
        per_device_train_batch_size=PAIRS_PER_STEP,
        max_steps=args.steps,
        max_length=args.max_length,
        learning_rate=1e-5,
        report_to="none",
        save_strategy="no",
        logging_steps=1,
        use_cpu=getattr(args, "device", "cpu") == "cpu",  # where distalign runs too
        bf16=getattr(args, "bf16", False),
        gradient_checkpointing=False,
        center_rewards_coefficient=0.01,
        dataloader_num_workers=0,
        seed=0,
        **(_grouped_batches(RewardConfig) if grouped else {}),
    )
    trainer = RewardTrainer(
        model=model, args=config, train_dataset=ds, processing_class=tok, callbacks=[Stamp()]
    )
    kept = trainer.train_dataset
    if grouped:  # the sampler reads a length column; the collator pads chosen and rejected
        lengths = [max(len(r["chosen_ids"]), len(r["rejected_ids"])) for r in kept]
        trainer.train_dataset = kept = kept.add_column("length", lengths)
        trainer._signature_columns = ["chosen_ids", "rejected_ids", "margin", "length"]
    if len(kept) != len(pairs):  # TRL drops pairs longer than max_length
        raise SystemExit(f"TRL kept {len(kept)} of {len(pairs)} pairs: max_length too small")
    trl_tokens = sum(len(r["chosen_ids"]) + len(r["rejected_ids"]) for r in kept)
    trainer.train()
    return {
        "step_end_times": stamps,
        "peak_mem_gb": peak_memory_gb(),
        "tokens_per_pair_as_tokenized": trl_tokens / len(pairs),
    }


def run_distalign(pairs, args, variant) -> dict:
    from distalign.rm.config import RMTrainConfig
    from distalign.rm.train import run
    from distalign.tracking import peak_memory_gb, read_metrics

    data = args.work / "pairs"
    data.mkdir(parents=True, exist_ok=True)
    for split in ("train", "test"):
        with open(data / f"{split}.jsonl", "w") as f:
            for p in pairs if split == "train" else pairs[:PAIRS_PER_STEP]:
                f.write(json.dumps({k: p[k] for k in ("prompt", "chosen", "rejected")}) + "\n")
    out = args.work / variant
    shutil.rmtree(out, ignore_errors=True)  # metrics.jsonl is appended to
    longest_prompt = max(p["prompt_tokens"] for p in pairs)
    cfg = RMTrainConfig(
        model_name_or_path=args.model_path,
        dataset_name=str(data),
        max_length=args.max_length,
        # never cut a prompt: the longest one fits (and still below max_length)
        max_prompt_length=max(args.max_length // 2, min(longest_prompt + 1, args.max_length - 1)),
        per_device_train_batch_size=PAIRS_PER_STEP,
        max_steps=args.steps,
        learning_rate=1e-5,
        eval_steps=0,
        save_steps=0,
        report_to="none",
        output_dir=str(out),
        prefix_sharing=variant != "plain",
        packing=variant == "packed",
        group_by_prompt=variant == "grouped",
        center_rewards_coefficient=0.01,
        bf16=getattr(args, "bf16", False),
    )
    run(cfg)
    logs = [r for r in read_metrics(out / "metrics.jsonl") if "train/elapsed_s" in r]
    return {
        "step_end_times": [r["train/elapsed_s"] for r in logs],
        "peak_mem_gb": peak_memory_gb(),
    }


def child(args) -> None:
    pairs = json.loads((args.work / "pairs.json").read_text())
    if args.variant in ("trl", "trl_grouped"):
        result = run_trl(pairs, args, grouped=args.variant == "trl_grouped")
    else:
        result = run_distalign(pairs, args, args.variant)
    t = result["step_end_times"]
    if len(t) != args.steps:
        raise SystemExit(f"{args.variant}: {len(t)} steps logged, {args.steps} expected")
    result["pairs_per_s"] = rate(t, PAIRS_PER_STEP)
    # the trained models are not needed (each run writes about 2 GB)
    shutil.rmtree(args.work / args.variant, ignore_errors=True)
    report(result)


def build_pairs(workload: str, n: int, max_length: int | None, model_path: str):
    from distalign.models.load import load_tokenizer

    tok = load_tokenizer(model_path)
    if workload in ("gold", "gold_by_prompt"):
        max_length = max_length or 256
        return gold_pairs(n, max_length, tok, by_prompt=workload == "gold_by_prompt"), max_length
    pairs = multiturn_pairs(n, tok)
    return pairs, max(max_length or 0, fitting_max_length(pairs))


def run_workload(workload: str, args) -> dict:
    work = args.work / workload
    work.mkdir(parents=True, exist_ok=True)
    n = args.steps * PAIRS_PER_STEP
    pairs, max_length = build_pairs(workload, n, args.max_length, args.model_path)
    (work / "pairs.json").write_text(json.dumps(pairs))
    prompt_tokens = [p["prompt_tokens"] for p in pairs]
    tokens_per_pair = sum(p["tokens"] for p in pairs) / len(pairs)
    shared_per_pair = sum(p["tokens_shared"] for p in pairs) / len(pairs)
    grouped_per_pair = grouped_tokens_per_pair(pairs)
    pairs_per_prompt = len(pairs) / len({json.dumps(p["prompt"]) for p in pairs})
    results = {}
    for variant in args.variants.split(","):
        if variant == "grouped" and pairs_per_prompt < 2:
            print(f"== {workload} / grouped: skipped ({pairs_per_prompt:.1f} pairs per prompt)")
            continue
        cmd = [sys.executable, __file__, "--variant", variant, "--work", str(work)]
        cmd += ["--steps", str(args.steps), "--max-length", str(max_length)]
        cmd += ["--model-path", args.model_path, "--device", args.device]
        cmd += ["--bf16"] if args.bf16 else []
        print(f"== {workload} / {variant}: {VARIANTS[variant]}", flush=True)
        r = run_child(cmd, f"{workload}/{variant}", child_env(args.device))
        r["tokens_per_s"] = r["pairs_per_s"] * tokens_per_pair
        # tokens the model actually runs (prefix sharing reads each prompt once)
        unshared = variant in ("trl", "trl_grouped", "plain")
        computed = tokens_per_pair if unshared else shared_per_pair
        computed = grouped_per_pair if variant == "grouped" else computed
        r["computed_tokens_per_s"] = r["pairs_per_s"] * computed
        results[variant] = r
        print(
            f"   {r['pairs_per_s']:.3f} pairs/s, {r['tokens_per_s']:.0f} tokens/s, "
            f"peak {r['peak_mem_gb']:.2f} GB",
            flush=True,
        )
    base = results.get("trl")
    return {
        "settings": {
            "pairs": n,
            "steps": args.steps,
            "pairs_per_step": PAIRS_PER_STEP,
            "max_length": max_length,
            "median_prompt_tokens": statistics.median(prompt_tokens),
            "max_prompt_tokens": max(prompt_tokens),
            "mean_reply_tokens": (tokens_per_pair - 2 * statistics.mean(prompt_tokens)) / 2,
            "tokens_per_pair": tokens_per_pair,
            "tokens_per_pair_prefix_shared": shared_per_pair,
            "tokens_per_pair_grouped": grouped_per_pair,
            "pairs_per_prompt": pairs_per_prompt,
            "tokens_per_pair_trl_tokenized": base and base.get("tokens_per_pair_as_tokenized"),
        },
        "results": {
            v: {
                "what": VARIANTS[v],
                "pairs_per_s": r["pairs_per_s"],
                "tokens_per_s": r["tokens_per_s"],
                "computed_tokens_per_s": r["computed_tokens_per_s"],
                "peak_mem_gb": r["peak_mem_gb"],
                "speedup_vs_trl": r["pairs_per_s"] / base["pairs_per_s"] if base else None,
                "memory_vs_trl": r["peak_mem_gb"] / base["peak_mem_gb"] if base else None,
            }
            for v, r in results.items()
        },
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--workloads", default=",".join(WORKLOADS))
    ap.add_argument("--steps", type=int, default=6, help="optimizer steps (8 pairs each)")
    ap.add_argument(
        "--max-length", type=int, help="gold: 256; multiturn: fitted to the longest pair"
    )
    ap.add_argument("--model", default=DEFAULT_MODEL, help=f"alias, folder, or {TINY}")
    ap.add_argument("--variants", default="trl,trl_grouped,shared,packed,grouped",
                    help=",".join(VARIANTS))  # fmt: skip
    ap.add_argument("--quick", action="store_true", help="tiny random model, 3 steps")
    ap.add_argument("--work", type=Path, default=Path("runs/bench_rm"))
    ap.add_argument(
        "--out", type=Path, help="default: results/rm_throughput.json (a GPU run: results/gpu/)"
    )
    add_device_args(ap)
    ap.add_argument("--variant", help=argparse.SUPPRESS)
    ap.add_argument("--model-path", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.variant:
        return child(args)
    args.device = resolve_bench_device(args.device)
    args.out = args.out or results_dir(args.quick, args.device) / "rm_throughput.json"
    if args.quick:
        args.model, args.steps = TINY, min(args.steps, 3)
        args.work = args.work.with_name(args.work.name + "_quick")
    args.work.mkdir(parents=True, exist_ok=True)
    args.model_path = policy_path(args.model, args.work)
    summary = {
        "model": args.model,
        "quick": args.quick,
        "device": args.device,
        "precision": "bf16 mixed" if args.bf16 else "float32",
        **environment(),
        "workloads": {},
    }
    for workload in args.workloads.split(","):
        summary["workloads"][workload] = run_workload(workload, args)
    write_json(args.out, summary)
    print(json.dumps({w: s["results"] for w, s in summary["workloads"].items()}, indent=2))


if __name__ == "__main__":
    main()
