#!/usr/bin/env bash
# The whole pipeline on the embedded defaults (~30 min on a 2-core CPU):
# reward models (scalar, ordinal) -> REINFORCE (moving average + scalar RM, RLOO + scalar RM,
# RLOO + CVaR of the ordinal RM) -> comparison with SFT -> report.
# A finished stage (its output exists) is reused; FORCE=1 redoes everything.
set -euo pipefail
cd "$(dirname "$0")/.."
DA=".venv/bin/distalign"
OUT=runs/demo
if [ "${FORCE:-0}" = 1 ]; then rm -rf "$OUT"; fi
mkdir -p "$OUT"
start=$(date +%s)
stage() { echo; echo "== [$(( ($(date +%s) - start) / 60 )) min] $*"; }
done_or() { if [ -e "$1" ]; then echo "   reusing $1"; return 1; fi; }

stage "the default model (SmolLM2-135M-Instruct from the embedded GGUF, converted once)"
$DA model prepare
stage "one prompt"
$DA generate prompts='[Explain in two sentences why the sky is blue.]' sampling.max_new_tokens=64 sampling.temperature=0
stage "the data: the shipped gold-judge benchmark, and a small HH-style file"
# (written to files first: piping into head would cut the command off mid-write)
$DA data inspect gold --split train > "$OUT/inspect_gold.txt"
head -n 8 "$OUT/inspect_gold.txt"
$DA data inspect examples/hh_sample.jsonl.gz > "$OUT/inspect_hh.txt"
head -n 4 "$OUT/inspect_hh.txt"

stage "reward model 1/2: scalar Bradley-Terry"
done_or $OUT/rm_scalar/final && $DA rm train configs/rm_demo_scalar.yaml
stage "reward model 2/2: ordinal distributional"
done_or $OUT/rm_ordinal/final && $DA rm train configs/rm_demo_ordinal.yaml
for m in scalar ordinal; do
  done_or $OUT/rm_$m/final/eval_gold_test.json && $DA rm eval --model $OUT/rm_$m/final --data gold --split test --limit 200 --max-length 256
done

for run in ma_scalar rloo_scalar rloo_cvar; do
  stage "REINFORCE: $run"
  done_or $OUT/rl_$run/final && $DA rl train configs/rl_demo_$run.yaml
done

stage "comparison with SFT on held-out prompts, and the report"
done_or $OUT/compare/compare.json && $DA eval compare \
  --policy ma_scalar=$OUT/rl_ma_scalar/final --policy rloo_scalar=$OUT/rl_rloo_scalar/final \
  --policy rloo_cvar=$OUT/rl_rloo_cvar/final \
  --reward scalar=$OUT/rm_scalar/final --reward ordinal=$OUT/rm_ordinal/final \
  --run $OUT/rl_rloo_scalar --rm-run $OUT/rm_scalar --rm-run $OUT/rm_ordinal \
  count=40 sampling.max_new_tokens=48 output_dir=$OUT/compare
.venv/bin/python - <<'PY'
import json
s = json.load(open("runs/demo/compare/compare.json"))
print(f"\n{'policy':12} {'gold win rate vs SFT [95% CI]':32} {'gold mean':>9} {'KL':>6}")
for name, r in s["policies"].items():
    lo, hi = r["gold_win_rate_ci95"]
    print(f"{name:12} {r['gold_win_rate']:.3f} [{lo:.3f}, {hi:.3f}]{'':13} {r['gold_mean']:9.3f} {r['kl_to_sft']:6.2f}")
print("std vs disagreement (Spearman):", s["std_vs_disagreement_spearman"])
PY
echo
echo "report: $OUT/compare/report.html   (numbers: $OUT/compare/compare.json)"
echo "wall time: $(( ($(date +%s) - start) / 60 )) min"
