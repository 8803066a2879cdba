#!/usr/bin/env bash
# Level 2 measurements (docs/results/README.md, "Level 2"), one stage at a time, logs in
# runs/logs/: reward models on all 2,400 training pairs of the gold benchmark (scalar and
# ordinal and a mixture of 2 Bradley–Terry components, about 45 min each on a 2-core CPU),
# then RLOO against them — the scalar RM, the ordinal RM's expectation and CVaR_0.25, the
# mixture's expectation and its worse component's gain (CVaR_0.5), and the same two against
# the end-to-end mixture with a faster head — at two seeds (7–16 min each), then
# comparisons of the final policies, more seeds of that mixture RM, the mixture at head rate
# 1e-2 with its own two RL arms and comparison, and what each RM's margin weighs
# (scripts/margin_attributes.py). A stage whose output exists is skipped, so
# rerunning the script carries on where it stopped. Summary: scripts/level2_summary.py.
set -uo pipefail
cd "$(dirname "$0")/.."
DA=${DA:-.venv/bin/distalign}
SEEDS=${SEEDS:-"0 1"}
mkdir -p runs/logs runs/full
LOGS=runs/logs
source scripts/stage.sh
rl_arms() {  # rl_arms ARM...: RLOO with configs/rl_level2_ARM.yaml at each seed
  local seed arm
  for seed in $SEEDS; do
    for arm in "$@"; do
      stage "runs/full/rl_${arm}_s$seed/final" "rl_${arm}_s$seed" $DA rl train \
        "configs/rl_level2_$arm.yaml" "seed=$seed" "output_dir=runs/full/rl_${arm}_s$seed"
    done
  done
}
stage runs/full/rm_scalar/final rm_scalar_full $DA rm train configs/rm_scalar_full.yaml
stage runs/full/rm_ordinal/final rm_ordinal_full \
  $DA rm train configs/rm_scalar_full.yaml head=ordinal n_bins=10 output_dir=runs/full/rm_ordinal
# a mixture of 2 Bradley–Terry components (the head the search below found; same settings)
stage runs/full/rm_mixture/final rm_mixture_full \
  $DA rm train configs/rm_scalar_full.yaml head=mixture n_components=2 output_dir=runs/full/rm_mixture
# every benchmark reply's features under the scalar RM's backbone, once, for a search over
# distributional heads trained on them (scripts/spread_search.py; seconds per setting)
stage runs/full/features.npz features .venv/bin/python scripts/spread_search.py extract \
  --model runs/full/rm_scalar/final --out runs/full/features.npz
# the search's best head as a reward model: the scalar RM's backbone, a mixture of 2 equal
# components fitted on its features (seconds), evaluated like any saved RM
stage runs/full/rm_mixture_frozen rm_mixture_frozen .venv/bin/python scripts/spread_search.py \
  save --features runs/full/features.npz --setting mixture_2_uniform \
  --model runs/full/rm_scalar/final --out runs/full/rm_mixture_frozen
stage runs/full/rm_mixture_frozen/eval_gold_test.json rm_mixture_frozen_eval $DA rm eval \
  model_name_or_path=runs/full/rm_mixture_frozen max_length=384
# the same, warm-started: both components begin at the scalar RM's own head (5 epochs, lr 1e-2)
stage runs/full/rm_mixture_warm rm_mixture_warm .venv/bin/python scripts/spread_search.py \
  save --features runs/full/features.npz --setting mixture_2_warm \
  --model runs/full/rm_scalar/final --out runs/full/rm_mixture_warm
stage runs/full/rm_mixture_warm/eval_gold_test.json rm_mixture_warm_eval $DA rm eval \
  model_name_or_path=runs/full/rm_mixture_warm max_length=384
# a second epoch of the scalar RM (the same schedule stretched over 600 steps), and the
# warm-started mixture on its backbone: does the chosen setting carry over?
stage runs/full/rm_scalar_2ep/final rm_scalar_2ep $DA rm train configs/rm_scalar_full.yaml \
  num_train_epochs=2 eval_steps=300 output_dir=runs/full/rm_scalar_2ep
stage runs/full/features_2ep.npz features_2ep .venv/bin/python scripts/spread_search.py extract \
  --model runs/full/rm_scalar_2ep/final --out runs/full/features_2ep.npz
stage runs/full/spread_search_2ep spread_search_2ep .venv/bin/python scripts/spread_search.py \
  search --features runs/full/features_2ep.npz --out runs/full/spread_search_2ep --only scalar \
  mixture_2_uniform mixture_2_warm mixture_2_warm_20_epochs mixture_2_warm_lr_1e-3
stage runs/full/rm_mixture_warm_2ep rm_mixture_warm_2ep .venv/bin/python scripts/spread_search.py \
  save --features runs/full/features_2ep.npz --setting mixture_2_warm \
  --model runs/full/rm_scalar_2ep/final --out runs/full/rm_mixture_warm_2ep
stage runs/full/rm_mixture_warm_2ep/eval_gold_test.json rm_mixture_warm_2ep_eval $DA rm eval \
  model_name_or_path=runs/full/rm_mixture_warm_2ep max_length=384
# the end-to-end mixture again with a faster head (2e-3 against the backbone's 2e-5)
stage runs/full/rm_mixture_head_lr/final rm_mixture_head_lr $DA rm train \
  configs/rm_scalar_full.yaml head=mixture n_components=2 head_learning_rate=2e-3 \
  output_dir=runs/full/rm_mixture_head_lr
# evaluations written before rm eval wrote per-pair scores: rerun for the paired comparisons
for rm in rm_scalar/final rm_ordinal/final rm_mixture/final rm_mixture_frozen; do
  stage "runs/full/$rm/eval_gold_test_pair_scores.csv" "eval_${rm%%/*}" $DA rm eval \
    "model_name_or_path=runs/full/$rm" max_length=384
done
# headlr_*: the same two functionals against the end-to-end mixture with the faster head
ARMS=${ARMS:-"scalar expectation cvar mixture_expectation mixture_cvar headlr_expectation headlr_cvar"}
# shellcheck disable=SC2086
rl_arms $ARMS
policies=()
for seed in $SEEDS; do
  for arm in scalar expectation cvar; do policies+=(--policy "${arm}_s$seed=runs/full/rl_${arm}_s$seed/final"); done
done
stage runs/full/compare/compare.json compare_level2 $DA eval compare "${policies[@]}" \
  --reward scalar=runs/full/rm_scalar/final --reward ordinal=runs/full/rm_ordinal/final \
  max_completion_length=48 max_eval_samples=32 num_generations=4 output_dir=runs/full/compare
# the mixture arms' final policies, with the mixture RM's spread over the compared replies
mixture=()
for seed in $SEEDS; do
  for arm in mixture_expectation mixture_cvar; do mixture+=(--policy "${arm}_s$seed=runs/full/rl_${arm}_s$seed/final"); done
done
stage runs/full/compare_mixture/compare.json compare_level2_mixture $DA eval compare "${mixture[@]}" \
  --reward scalar=runs/full/rm_scalar/final --reward mixture=runs/full/rm_mixture_frozen \
  max_completion_length=48 max_eval_samples=32 num_generations=4 output_dir=runs/full/compare_mixture
# the head-rate mixture's arms, with its spread over the compared replies
headlr=()
for seed in $SEEDS; do
  for arm in headlr_expectation headlr_cvar; do headlr+=(--policy "${arm}_s$seed=runs/full/rl_${arm}_s$seed/final"); done
done
stage runs/full/compare_headlr/compare.json compare_level2_headlr $DA eval compare "${headlr[@]}" \
  --reward scalar=runs/full/rm_scalar/final --reward mixture=runs/full/rm_mixture_head_lr/final \
  max_completion_length=48 max_eval_samples=32 num_generations=4 output_dir=runs/full/compare_headlr
# more seeds of the head-rate mixture: is its contested AUROC more than one run's luck?
stage runs/full/rm_mixture_head_lr_s1/final rm_mixture_head_lr_s1 $DA rm train \
  configs/rm_scalar_full.yaml head=mixture n_components=2 head_learning_rate=2e-3 seed=1 \
  output_dir=runs/full/rm_mixture_head_lr_s1
stage runs/full/rm_mixture_head_lr_s2/final rm_mixture_head_lr_s2 $DA rm train \
  configs/rm_scalar_full.yaml head=mixture n_components=2 head_learning_rate=2e-3 seed=2 \
  output_dir=runs/full/rm_mixture_head_lr_s2
# the head rate that parts the components at every seed of the GPU sweep
# (docs/results/level2/gpu_sweep), on this CPU at seed 1 (the hardest start at lower rates)
stage runs/full/rm_mixture_head_lr1e-2_s1/final rm_mixture_head_lr1e-2_s1 $DA rm train \
  configs/rm_mixture_full.yaml seed=1 output_dir=runs/full/rm_mixture_head_lr1e-2_s1
# mix1e2_*: E[R] and the worse component's gain against it, two seeds, and their comparison
rl_arms mix1e2_expectation mix1e2_cvar
mix1e2=()
for seed in $SEEDS; do
  for arm in mix1e2_expectation mix1e2_cvar; do mix1e2+=(--policy "${arm}_s$seed=runs/full/rl_${arm}_s$seed/final"); done
done
stage runs/full/compare_mix1e2/compare.json compare_level2_mix1e2 $DA eval compare "${mix1e2[@]}" \
  --reward scalar=runs/full/rm_scalar/final --reward mixture=runs/full/rm_mixture_head_lr1e-2_s1/final \
  max_completion_length=48 max_eval_samples=32 num_generations=4 output_dir=runs/full/compare_mix1e2
# what each RM's margin weighs, against the gold judge's attributes (seconds)
.venv/bin/python scripts/margin_attributes.py > runs/logs/margin_attributes.log 2>&1
