#!/usr/bin/env bash
# REINFORCE measurements on this machine: step memory/time at 64/128/256 new tokens, then
# short RLOO runs against (a) the scalar RM and (b) the ordinal RM through CVaR_0.25.
# Expects the reward models of scripts/measure_rm.sh. Logs in runs/logs/.
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p runs/logs
DA=.venv/bin/distalign
.venv/bin/python benchmarks/rl_step_memory.py > runs/logs/rl_step_memory.log 2>&1
COMMON="steps=12 eval_every=12 save_every=6 eval_count=16 lr=2.0e-4"
$DA rl train configs/rl_rloo_scalar.yaml reward=runs/rm_scalar_cpu/final $COMMON > runs/logs/rl_rloo_scalar.log 2>&1
$DA rl train configs/rl_rloo_dist_cvar.yaml reward=runs/rm_ordinal_cpu/final $COMMON > runs/logs/rl_rloo_dist_cvar.log 2>&1
