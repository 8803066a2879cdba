#!/usr/bin/env bash
# REINFORCE step memory/time at 64/128/256 new tokens on this machine (log in runs/logs/).
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p runs/logs
.venv/bin/python benchmarks/rl_step_memory.py > runs/logs/rl_step_memory.log 2>&1
