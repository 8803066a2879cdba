"""The whole benchmark suite in one run (``make bench``), then one report.

    python benchmarks/run_all.py            # ~35 min on 2 idle CPU cores; results/README.md
    python benchmarks/run_all.py --quick    # tiny random model, ~6 min: checks the plumbing
    python benchmarks/run_all.py --report   # rewrite the report from the saved JSON only

Runs, each in its own processes: matmul_peak.py (the fp32 ceiling), rm_throughput.py (reward
model training vs TRL's RewardTrainer, gold and multi-turn workloads), rl_vs_trl.py (an RLOO
step vs TRL's RLOOTrainer, full fine-tune and LoRA, profiled), rl_step_memory.py (distalign's
step time and memory against new tokens and k). Then writes README.md beside the results: the
machine, the versions, every table, each ratio against the project's goal, the hardware
fractions, and each script's wall time.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

from common import (
    HERE,
    environment,
    linear_fit,
    param_count,
    policy_path,
    results_dir,
    write_json,
)

GOAL_SPEEDUP = 1.5  # × TRL, at no more memory than TRL's
# the two reward-model workloads; gold_by_prompt (prompt-dense) is shown beside them
GOAL_WORKLOADS = ("gold", "multiturn")


def scripts(quick: bool) -> list[tuple[str, list[str]]]:
    """The CPU suite: its report divides by the CPU's matmul peak, so every script runs on
    the CPU even where a GPU is seen (the scripts alone take ``--device cuda --bf16``)."""
    q = ["--quick"] if quick else []
    cpu = ["--device", "cpu"]
    return [
        ("matmul_peak", q),
        # 12 steps: with 6, which batch is the untimed warm-up moved the gold ratio by 0.05
        ("rm_throughput", [*q, *cpu, "--steps", "12"]),
        ("profile_rm_step", q),
        # 5 steps: the warm-up and the profiled last step leave 3 timed ones (2 moved the
        # ratio by up to 0.45 between runs of identical work)
        ("rl_vs_trl", [*q, *cpu, "--steps", "5", "--profile"]),
        ("rl_step_memory", [*q, *cpu]),
    ]


def run_scripts(quick: bool, only: list[str] | None) -> dict[str, float]:
    walls = {}
    for name, extra in scripts(quick):
        if only and name not in only:
            continue
        print(f"\n##### {name} {' '.join(extra)}", flush=True)
        t = time.perf_counter()
        subprocess.run([sys.executable, str(HERE / f"{name}.py"), *extra], check=True)
        walls[name] = time.perf_counter() - t
        print(f"##### {name}: {walls[name] / 60:.1f} min", flush=True)
    return walls


def load(folder: Path, name: str) -> dict | None:
    path = folder / f"{name}.json"
    return json.loads(path.read_text()) if path.is_file() else None


def fmt(x, digits: int = 2) -> str:
    if x is None:
        return "–"
    if isinstance(x, bool):
        return "yes" if x else "**no**"
    return f"{x:.{digits}f}"


def table(header: list[str], rows: list[list]) -> list[str]:
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return out + ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]


def goal(speedup, memory) -> str:
    if speedup is None:
        return "–"
    ok = speedup >= GOAL_SPEEDUP and memory <= 1.0
    return "met" if ok else "**missed**"


def rm_section(rm: dict, folder: Path) -> list[str]:
    lines = ["## Reward-model training vs TRL RewardTrainer", ""]
    lines.append(
        "8 pairs per optimizer step, full fine-tune, fp32; throughput over steps 2..N. "
        "Tokens/s: real (non-pad) tokens of prompt + chosen and prompt + rejected per pair, "
        f"the same count for every tool. Goal: ≥ {GOAL_SPEEDUP}× TRL's pairs/s at ≤ its memory."
    )
    for workload, w in rm["workloads"].items():
        s = w["settings"]
        lines += ["", f"### {workload}", ""]
        lines.append(
            f"{s['pairs']} pairs, {s['steps']} steps, max_length {s['max_length']} (nothing "
            f"truncated), median prompt {s['median_prompt_tokens']:.0f} tokens (max "
            f"{s['max_prompt_tokens']}), mean reply {s['mean_reply_tokens']:.0f} tokens, "
            f"{s['tokens_per_pair']:.0f} tokens per pair ({s['tokens_per_pair_prefix_shared']:.0f}"
            " with the prompt read once"
            + (f"; {s['tokens_per_pair_grouped']:.0f} in batches grouped by prompt, each "
               "distinct prompt and reply read once)." if "grouped" in w["results"] else ").")
        )  # fmt: skip
        lines.append("")
        grouped_trl = w["results"].get("trl_grouped")
        rows = [
            [v, r["what"], fmt(r["pairs_per_s"], 3), fmt(r["tokens_per_s"], 0),
             fmt(r["peak_mem_gb"]), fmt(r["speedup_vs_trl"]), fmt(r["memory_vs_trl"]),
             fmt(r["pairs_per_s"] / grouped_trl["pairs_per_s"]) if grouped_trl else "–",
             goal(r["speedup_vs_trl"], r["memory_vs_trl"])
             if v not in ("trl", "trl_grouped", "grouped") and workload in GOAL_WORKLOADS
             else ""]
            for v, r in w["results"].items()
        ]  # fmt: skip
        lines += table(
            ["variant", "what", "pairs/s", "tokens/s", "peak GB", "× TRL speed", "× TRL memory",
             "× TRL grouped speed", "goal"], rows)  # fmt: skip
    profiles = sorted(folder.glob("profile_rm_*.txt"))
    if profiles:
        lines += ["", "Top operators by self CPU time over steps 2..N, gold workload "
                  "(`profile_rm_step.py`): "
                  + ", ".join(f"[{p.stem}]({p.name})" for p in profiles) + "."]  # fmt: skip
    return lines


def rl_section(rl: dict, folder: Path) -> list[str]:
    s = rl["settings"]
    lines = ["", "## RL step vs TRL RLOOTrainer", ""]
    lines.append(
        f"{s['prompts_per_step']} prompts × k={s['k']} = {s['completions_per_step']} "
        f"completions per step, ≤ {s['max_new_tokens']} new tokens, β={s['beta']}, "
        f"temperature {s['temperature']}, top_p {s['top_p']}, teacher-forced micro-batches of "
        f"{s['micro_batch_completions']} completions, the same saved reward-model folder for "
        f"both; step times are means over the steps after the warm-up (the last, profiled "
        f"step left out). TRL's 'reference' column holds its two no-grad log-prob passes "
        f"(the policy's own, then the reference's). Goal: ≥ {GOAL_SPEEDUP}× TRL's "
        "completions/s at ≤ its memory."
    )
    lines.append("")
    rows = []
    for name, r in rl["runs"].items():
        tool, mode = name.split("_")
        rows.append([
            tool, mode, fmt(r["completions_per_s"], 3), fmt(r["step_s"], 1),
            fmt(r["generate_s"], 1), fmt(r["reward_s"], 1), fmt(r["reference_s"], 1),
            fmt(r["train_s"], 1), fmt(r["other_s"], 1), fmt(r["mean_reply_tokens"], 1),
            fmt(r["peak_mem_gb"]), fmt(r.get("speedup_vs_trl")), fmt(r.get("memory_vs_trl")),
            goal(r.get("speedup_vs_trl"), r.get("memory_vs_trl")) if tool != "trl" else "",
        ])  # fmt: skip
    lines += table(
        ["tool", "mode", "completions/s", "step s", "generate s", "reward s", "reference s",
         "train s", "other s", "reply tokens", "peak GB", "× TRL speed", "× TRL memory",
         "goal"], rows)  # fmt: skip
    profiles = sorted(folder.glob("profile_rl_*.txt"))
    if profiles:
        lines += ["", "Top operators by self CPU time, one profiled step each: "
                  + ", ".join(f"[{p.stem}]({p.name})" for p in profiles) + "."]  # fmt: skip
    return lines


def scaling_section(sc: dict, rl: dict | None) -> list[str]:
    mode = "LoRA" if sc["settings"]["lora"] else "full fine-tune"
    lines = ["", "## distalign RL step: scaling with new tokens and k", ""]
    lines.append(
        f"{sc['settings']['prompts_per_step']} prompts per step, {mode}, "
        f"{sc['settings']['steps']} step(s) per point (a single step includes the warm-up)."
    )
    for key, label, points in (("tokens", "max new tokens (k=4)", sc["by_tokens"]),
                               ("k", "k (samples per prompt)", sc["by_k"])):  # fmt: skip
        lines.append("")
        rows = [
            [p[key], p["prompts"] * p["k"], fmt(p["mean_reply_tokens"], 1), fmt(p["step_s"], 1),
             fmt(p["generate_s"], 1), fmt(p["reward_s"] + p["reference_s"], 1),
             fmt(p["train_s"], 1), fmt(p["peak_mem_gb"])]
            for p in points
        ]  # fmt: skip
        lines += table(
            [label, "completions", "reply tokens", "step s", "generate s",
             "reward + reference s", "train s", "peak GB"], rows)  # fmt: skip
        fit = sc[f"memory_fit_{key}"]
        shape = "about linear." if fit["about_linear"] else "**not linear** (R² < 0.98)."
        lines += ["", f"Peak memory vs {key}: {fit['slope'] * 1024:.1f} MB per unit above "
                  f"{fit['intercept']:.2f} GB, R² = {fit['r2']:.3f}: {shape}"]  # fmt: skip
    points = [*sc["by_tokens"], *sc["by_k"]]  # recomputed: older files fit per prompt
    fit = linear_fit([p["mean_reply_tokens"] * p["k"] * p["prompts"] for p in points],
                     [p["peak_mem_gb"] for p in points])  # fmt: skip
    lines += ["", f"Against generated tokens per step (reply tokens × completions, all points): "
              f"R² = {fit['r2']:.3f}, {fit['slope'] * 2**20:.1f} KB per generated token.",
              "", "![time and memory vs new tokens](rl_scaling_tokens.png)",
              "![time and memory vs k](rl_scaling_k.png)"]  # fmt: skip
    at_256 = next((p for p in sc["by_tokens"] if p["tokens"] == 256 and p["k"] == 4), None)
    trl = rl and rl["runs"].get(f"trl_{'lora' if sc['settings']['lora'] else 'full'}")
    lean = sc.get("checkpointing")
    if lean:
        lines += ["", f"With gradient checkpointing and micro-batches of {lean['micro']} prompt(s) "
                  f"× k, {lean['tokens']} new tokens × "
                  f"{lean['prompts'] * lean['k']} completions: step {lean['step_s']:.1f} s, peak "
                  f"{lean['peak_mem_gb']:.2f} GB."]  # fmt: skip
    if at_256 and trl:
        for what, point in (("", at_256), (" with gradient checkpointing, micro 1", lean)):
            if not point or point["tokens"] != 256:
                continue
            ok = point["peak_mem_gb"] < trl["peak_mem_gb"]
            lines += ["", f"Goal: distalign at 256 new tokens × {point['prompts'] * 4} completions"
                      f"{what} ({point['peak_mem_gb']:.2f} GB) in less memory than TRL's "
                      f"{trl['tokens']}-token step ({trl['peak_mem_gb']:.2f} GB), {mode}: "
                      + ("met." if ok else "**missed**.")]  # fmt: skip
    return lines


def ceiling_section(peak: dict, rm: dict | None, rl: dict | None, params: int) -> list[str]:
    g = peak["gflops"]
    lines = ["", "## Hardware ceiling", ""]
    lines.append(
        f"fp32 `torch.mm` {peak['n']}×{peak['n']}, best of {peak['repeats']}: **{g:.1f} GFLOP/s**. "
        f"Model: {params / 1e6:.1f} M parameters. FLOPs ≈ 6·params·tokens for forward + "
        "backward, 2·params·tokens for a forward pass or decoding (attention not counted); "
        "tokens are those the model actually runs (a prompt shared by its replies once)."
    )
    rows = []
    for workload, w in (rm or {}).get("workloads", {}).items():
        dense = w["settings"].get("pairs_per_prompt", 1) >= 2
        for v in ("shared", "packed", "grouped", "trl", "trl_grouped"):
            r = w["results"].get(v)
            # on prompt-dense pairs a default batch may hold a reply twice, encoded once: the
            # tokens it really runs are not counted there, so no fraction is given
            if r and not (dense and v in ("shared", "packed")):
                f = 6 * params * r["computed_tokens_per_s"] / 1e9
                rows.append([f"RM training fwd+bwd, {workload}, {v}", fmt(f, 1), fmt(f / g, 3)])
    for name, r in (rl or {}).get("runs", {}).items():
        tool, mode = name.split("_")
        replies = r["mean_reply_tokens"] * r["prompts"] * r["k"]
        decode = 2 * params * (replies + r["prompt_tokens_per_step"]) / r["generate_s"] / 1e9
        rows.append([f"RL decoding (prefill + sampling), {tool} {mode}", fmt(decode, 1),
                     fmt(decode / g, 3)])  # fmt: skip
        if mode == "full" and tool == "distalign":
            train = 6 * params * (replies + r["prompt_tokens_per_step"]) / r["train_s"] / 1e9
            rows.append([f"RL teacher-forced fwd+bwd, {tool} {mode}", fmt(train, 1),
                         fmt(train / g, 3)])  # fmt: skip
    lines.append("")
    lines += table(["what", "GFLOP/s", "fraction of matmul peak"], rows)
    return lines


def report(folder: Path, walls: dict[str, float], model: str, work: Path) -> Path:
    rm, rl, sc = (load(folder, n) for n in ("rm_throughput", "rl_vs_trl", "rl_step_memory"))
    peak = load(folder, "matmul_peak")
    # the machine and versions the results were measured on (written with each), not this one
    measured = next((x for x in (rm, rl, sc, peak) if x and "machine" in x), None)
    env = {k: measured[k] for k in ("machine", "versions")} if measured else environment()
    m, v = env["machine"], env["versions"]
    lines = ["# distalign vs TRL: benchmark results", ""]
    lines.append(
        "Written by `benchmarks/run_all.py` (`make bench`); see `benchmarks/README.md` for "
        "what each script measures and the fairness choices. Each script's numbers come "
        "from its latest run (wall times below)."
    )
    lines += ["", f"Machine: {m['cpu_count']} CPUs ({m['cpu_model']}), {m['ram_gb']} GB RAM, "
              f"{m['platform']}, torch threads {m.get('torch_threads')}.",
              "Versions: " + ", ".join(f"{k} {x}" for k, x in v.items()) + ".", ""]  # fmt: skip
    first = next((x for x in (rm, rl, sc) if x), None)
    if first:
        lines.append(
            f"Model: `{first['model']}`" + (" (quick smoke run)" if first["quick"] else "")
        )
    if walls:
        each = ", ".join(f"{k} {s / 60:.1f} min" for k, s in walls.items())
        lines += ["", f"Wall time of each script's latest run: {each}; total "
                  f"{sum(walls.values()) / 60:.1f} min.", ""]  # fmt: skip
    if rm:
        lines += rm_section(rm, folder)
    if rl:
        lines += rl_section(rl, folder)
    if sc:
        lines += scaling_section(sc, rl)
    if peak:
        lines += ceiling_section(peak, rm, rl, param_count(policy_path(model, work)))
    out = folder / "README.md"
    out.write_text("\n".join(lines) + "\n")
    write_json(folder / "run_all.json", {**env, "wall_s": walls})
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="tiny random model, every script")
    ap.add_argument("--only", help="comma-separated scripts to run (default: all)")
    ap.add_argument("--report", action="store_true", help="only rewrite the report")
    args = ap.parse_args()
    folder = results_dir(args.quick)
    walls = {}
    if (args.report or args.only) and (folder / "run_all.json").is_file():
        # the other scripts' results stay in the report, and so do their wall times
        walls = json.loads((folder / "run_all.json").read_text()).get("wall_s", {})
    if not args.report:
        walls |= run_scripts(args.quick, args.only.split(",") if args.only else None)
    model = "tiny" if args.quick else "smollm2-135m-instruct"
    out = report(folder, walls, model, Path("runs/bench_rl_vs_trl_quick"))
    print(f"\nreport: {out}")


if __name__ == "__main__":
    main()
