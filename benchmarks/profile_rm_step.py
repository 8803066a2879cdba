"""Where a reward-model training step spends its time: torch.profiler over steps 2..N of
distalign (prefix sharing, the default) and of TRL's RewardTrainer, on the gold workload of
``rm_throughput.py`` (same pairs, model, batch and settings).

    python benchmarks/profile_rm_step.py               # 4 steps, steps 2-4 profiled
    python benchmarks/profile_rm_step.py --quick       # tiny random model

Writes the top operators by self CPU time to ``results/profile_rm_<tool>_gold.txt``; each
tool runs in its own process.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

from child import report, run_child
from common import DEFAULT_MODEL, TINY, child_env, policy_path, profile_table, results_dir
from rm_throughput import PAIRS_PER_STEP, gold_pairs, run_distalign, run_trl


class Window:
    """The profiler over the optimizer steps after the first (the warm-up)."""

    def __init__(self):
        import torch.profiler as tp

        self.prof = tp.profile(activities=[tp.ProfilerActivity.CPU])
        self.started = False

    def step_ended(self) -> None:
        if not self.started:
            self.prof.start()
            self.started = True

    def table(self) -> str:
        self.prof.stop()
        return profile_table(self.prof)


def child(args) -> None:
    pairs = json.loads((args.work / "pairs.json").read_text())
    window = Window()
    if args.tool == "trl":
        import transformers

        # every Trainer callback list gets one more entry: start after the first step
        class Start(transformers.TrainerCallback):
            def on_step_end(self, *a, **k):
                window.step_ended()

        original = transformers.Trainer.__init__

        def init(self, *a, **k):
            k["callbacks"] = [*(k.get("callbacks") or []), Start()]
            original(self, *a, **k)

        transformers.Trainer.__init__ = init
        run_trl(pairs, args)
    else:
        import distalign.rm.train as rm

        step = rm.train_step

        def timed_step(*a, **k):
            out = step(*a, **k)
            window.step_ended()
            return out

        rm.train_step = timed_step
        run_distalign(pairs, args, "shared")
    out = results_dir(args.quick) / f"profile_rm_{args.tool}_gold.txt"
    out.write_text(window.table() + "\n")
    shutil.rmtree(args.work / ("trl" if args.tool == "trl" else "shared"), ignore_errors=True)
    report({"tool": args.tool, "profile": str(out)})


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=4, help="optimizer steps (8 pairs each)")
    ap.add_argument("--model", default=DEFAULT_MODEL, help=f"alias, folder, or {TINY}")
    ap.add_argument("--quick", action="store_true", help="tiny random model, 2 steps")
    ap.add_argument("--work", type=Path, default=Path("runs/bench_rm_profile"))
    ap.add_argument("--tool", help=argparse.SUPPRESS)
    ap.add_argument("--max-length", type=int, default=256, help=argparse.SUPPRESS)
    ap.add_argument("--model-path", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.tool:
        return child(args)
    if args.quick:
        args.model, args.steps = TINY, 2
        args.work = args.work.with_name(args.work.name + "_quick")
    args.work.mkdir(parents=True, exist_ok=True)
    args.model_path = policy_path(args.model, args.work)
    from distalign.models.load import load_tokenizer

    tok = load_tokenizer(args.model_path)
    pairs = gold_pairs(args.steps * PAIRS_PER_STEP, args.max_length, tok)
    (args.work / "pairs.json").write_text(json.dumps(pairs))
    for tool in ("distalign", "trl"):
        cmd = [sys.executable, __file__, "--tool", tool, "--work", str(args.work)]
        cmd += ["--steps", str(args.steps), "--model-path", args.model_path]
        cmd += ["--max-length", str(args.max_length)] + (["--quick"] if args.quick else [])
        # operators by self CPU time: a CPU profile, with the GPUs hidden from both tools
        print(run_child(cmd, f"profile {tool}", child_env("cpu"))["profile"])


if __name__ == "__main__":
    main()
