#!/usr/bin/env bash
# Reward-model measurements on this machine: throughput vs TRL, then the three heads on a
# few hundred pairs of the gold benchmark. Logs in runs/logs/.
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p runs/logs
DA=.venv/bin/distalign
.venv/bin/python benchmarks/rm_throughput.py --steps 8 > runs/logs/rm_throughput.log 2>&1
$DA rm train configs/rm_scalar_cpu.yaml overwrite_output_dir=true > runs/logs/rm_scalar.log 2>&1
$DA rm train configs/rm_scalar_cpu.yaml head=categorical overwrite_output_dir=true output_dir=runs/rm_categorical_cpu > runs/logs/rm_categorical.log 2>&1
$DA rm train configs/rm_scalar_cpu.yaml head=ordinal overwrite_output_dir=true output_dir=runs/rm_ordinal_cpu > runs/logs/rm_ordinal.log 2>&1
for m in scalar categorical ordinal; do
  $DA rm eval model_name_or_path=runs/rm_${m}_cpu/final dataset_name=gold dataset_test_split=test max_length=384 > runs/logs/rm_eval_${m}.log 2>&1
done
