#!/usr/bin/env bash
# Advantage estimators side by side at the demo's size (docs/results/README.md, "Advantage
# estimators"): the demo's scalar reward model (160 pairs, bfloat16 where the hardware has it),
# then REINFORCE against it with each estimator — rloo, grpo, dr_grpo, reinforce_pp, remax —
# at two seeds, the demo's RLOO settings otherwise (12 steps of 6 prompts × k = 4, β 0.05,
# LoRA, lr 6e-4), each run evaluating gold reward, proxy reward and KL on 32 held-out prompts
# every 4 steps (and before the first). About 5 min a run on a 2-core CPU alone; logs (and each
# stage's wall time, seconds.tsv) in runs/estimators/logs/. A finished stage is skipped and
# a stopped one resumed, so rerunning carries on.
# Summary: .venv/bin/python scripts/estimators_summary.py
#
# TRL GRPO's objectives for the updates after a step's first (num_iterations=2, baseline grpo;
# dapo is PPO's clip, TRL GRPO's default; cispo with epsilon_high=5, as TRL advises):
#   ESTIMATORS= OBJECTIVES="dapo cispo sapo vespo" scripts/measure_estimators.sh
#   .venv/bin/python scripts/estimators_summary.py --objectives
# OBJ_LR=3e-4 runs the objectives at that learning rate instead (rl_obj_<loss_type>_lr3e-4_s*).
set -uo pipefail
cd "$(dirname "$0")/.."
DA=${DA:-.venv/bin/distalign}
SEEDS=${SEEDS:-"0 1"}
ESTIMATORS=${ESTIMATORS-"rloo grpo dr_grpo reinforce_pp remax"}
OBJECTIVES=${OBJECTIVES-}
OBJ_LR=${OBJ_LR-}
OUT=${OUT:-runs/estimators}
BF16=$(.venv/bin/python -c 'from distalign.models.load import native_bf16; print(int(native_bf16()))' | tail -n 1)
X=()
if [ "$BF16" = 1 ]; then X=(bf16=true); fi
mkdir -p "$OUT/logs"
LOGS="$OUT/logs"
source scripts/stage.sh
stage "$OUT/rm_scalar/final" rm_scalar $DA rm train configs/rm_demo_scalar.yaml \
  "output_dir=$OUT/rm_scalar" "${X[@]}"
rl() {  # rl NAME SEED settings...: one REINFORCE run against the scalar RM
  local name=$1 seed=$2
  shift 2
  stage "$OUT/$name/final" "$name" $DA rl train configs/rl_demo_rloo_scalar.yaml \
    "reward=$OUT/rm_scalar/final" "seed=$seed" "output_dir=$OUT/$name" \
    eval_steps=4 eval_on_start=true max_eval_samples=32 save_steps=12 keep_checkpoints=false \
    "${X[@]}" "$@"
}
for seed in $SEEDS; do
  for est in $ESTIMATORS; do
    rl "rl_${est}_s$seed" "$seed" "baseline=$est"
  done
  for obj in $OBJECTIVES; do
    high=()
    if [ "$obj" = cispo ]; then high=(epsilon_high=5); fi
    lr=()
    if [ -n "$OBJ_LR" ]; then lr=("learning_rate=$OBJ_LR"); fi
    rl "rl_obj_${obj}${OBJ_LR:+_lr$OBJ_LR}_s$seed" "$seed" baseline=grpo num_iterations=2 \
      "loss_type=$obj" "${high[@]}" "${lr[@]}"
  done
done
