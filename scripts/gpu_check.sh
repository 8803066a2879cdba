#!/usr/bin/env bash
# What a CUDA machine adds to the CPU test suite, and the GPU figures of docs/gpu.md:
#
#   bash scripts/gpu_check.sh OUT [STAGE ...]
#
# STAGEs (default: tests suite bench sweep):
#   tests  the tests marked gpu (CUDA against the CPU)
#   suite  the whole default suite with a GPU in view (every command's device=auto picks it)
#   bench  benchmarks/rm_throughput.py and rl_vs_trl.py on the GPU, bf16, TRL in the same run
#   sweep  end-to-end mixture reward models on all 2,400 benchmark pairs, several head learning
#          rates and seeds at once on the one GPU (SWEEP_RATES, SWEEP_SEEDS), plus the scalar RM
#          at seed 0 as the check against the CPU's figures; stops at SWEEP_DEADLINE seconds
#          (float32 weights; TF32 matmuls unless TF32=0). SWEEP_SCALAR=0 leaves the scalar run
#          out; SWEEP_KEYS adds overrides to every run (a smoke run: "max_train_samples=16 ...").
# Writes logs and results under OUT (every file flat, at most a few); scratch under $WORK.
set -u
OUT=${1:?usage: bash scripts/gpu_check.sh OUT [tests|bench|sweep ...]}
shift
STAGES=${*:-tests suite bench sweep}
PY=${PY:-python3}
WORK=${WORK:-runs/gpu_check}
SWEEP_RATES=${SWEEP_RATES:-"2e-3 5e-3"}
SWEEP_SEEDS=${SWEEP_SEEDS:-"0 1 2 3"}
SWEEP_DEADLINE=${SWEEP_DEADLINE:-600}
SWEEP_SCALAR=${SWEEP_SCALAR:-1}
SWEEP_KEYS=${SWEEP_KEYS:-}
export PYTHONUNBUFFERED=1 TQDM_DISABLE=1
mkdir -p "$OUT" "$WORK"
T0=$(date +%s)
since() { echo $(($(date +%s) - T0)); }

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
$PY -c 'import torch, transformers, accelerate, peft; print("torch", torch.__version__,
"cuda", torch.version.cuda, "transformers", transformers.__version__, "accelerate",
accelerate.__version__, "peft", peft.__version__, "gpu", torch.cuda.is_available() and
torch.cuda.get_device_name(0))'

for stage in $STAGES; do
  case $stage in
  tests)
    echo "[$(since) s] tests marked gpu"
    $PY -m pytest -m gpu -q -p no:cacheprovider tests > "$OUT/tests_gpu.log" 2>&1
    echo "  exit $? ($(tail -1 "$OUT/tests_gpu.log"))"
    ;;
  suite)
    echo "[$(since) s] the default suite with the GPU in view"
    workers=$($PY -c 'import importlib.util as u; print("-n 8" if u.find_spec("xdist") else "")')
    # shellcheck disable=SC2086
    $PY -m pytest -m "not slow" -q -p no:cacheprovider $workers tests > "$OUT/tests_suite.log" 2>&1
    echo "  exit $? ($(tail -1 "$OUT/tests_suite.log"))"
    ;;
  bench)
    echo "[$(since) s] bench: reward-model training, bf16, against TRL"
    $PY benchmarks/rm_throughput.py --device cuda --bf16 --workloads gold --variants trl,shared \
      --steps 12 --work "$WORK/bench_rm" --out "$OUT/rm_throughput_gpu.json" \
      > "$OUT/bench.log" 2>&1
    echo "  exit $?"
    echo "[$(since) s] bench: one RLOO step, LoRA, bf16, against TRL"
    $PY benchmarks/rl_vs_trl.py --device cuda --bf16 --modes lora --steps 3 >> "$OUT/bench.log" 2>&1
    echo "  exit $?"
    cp benchmarks/results/rl_vs_trl.json "$OUT/rl_vs_trl_gpu.json" 2>/dev/null
    ;;
  sweep)
    echo "[$(since) s] sweep: the model converted once"
    $PY -c 'from distalign.models.load import resolve_model; print(resolve_model())' \
      > "$WORK/convert.log" 2>&1 || { tail -5 "$WORK/convert.log"; continue; }
    left=$((SWEEP_DEADLINE - $(since)))
    runs=""
    [ "$SWEEP_SCALAR" = 1 ] && runs="scalar_s0"
    for lr in $SWEEP_RATES; do for s in $SWEEP_SEEDS; do runs="$runs lr${lr}_s$s"; done; done
    tf32=true && [ "${TF32:-1}" = 0 ] && tf32=false
    echo "[$(since) s] sweep: $runs at once, at most $left s"
    for r in $runs; do
      if [ "$r" = scalar_s0 ]; then
        keys="head=scalar seed=0"
      else
        lr=${r#lr} && lr=${lr%_s*}
        keys="head=mixture n_components=2 head_learning_rate=$lr seed=${r##*_s}"
      fi
      # shellcheck disable=SC2086
      OMP_NUM_THREADS=2 timeout "$left" \
        $PY -m distalign.cli rm train configs/rm_scalar_full.yaml $keys save_steps=0 "tf32=$tf32" \
        report_to=none $SWEEP_KEYS "output_dir=$WORK/sweep/$r" > "$WORK/sweep_$r.log" 2>&1 &
    done
    wait
    echo "[$(since) s] sweep: done"
    $PY - "$WORK" "$OUT/sweep.json" <<'EOF'
import json, sys
from pathlib import Path
work, out = Path(sys.argv[1]), Path(sys.argv[2])
rows = {}
for log in sorted(work.glob("sweep_*.log")):
    name = log.stem[len("sweep_"):]
    ev = work / "sweep" / name / "final" / "eval_gold_test.json"
    summary = work / "sweep" / name / "summary.json"
    row = {"finished": ev.is_file()}
    if summary.is_file():
        s = json.loads(summary.read_text())
        row.update(train_seconds=s.get("train_seconds"), pairs_per_s=s.get("pairs_per_s"))
    if ev.is_file():
        row["eval"] = {k: v for k, v in json.loads(ev.read_text()).items() if not isinstance(v, (list, dict))}
    else:
        row["log_tail"] = log.read_text()[-1500:]
    rows[name] = row
out.write_text(json.dumps(rows, indent=1) + "\n")
for k, r in rows.items():
    e = r.get("eval", {})
    print(k, r["finished"], r.get("train_seconds"), e.get("accuracy"), e.get("contested_auroc"),
          e.get("spread_spearman_centred"), e.get("component_spread"))
EOF
    tar -czf "$OUT/sweep_files.tgz" -C "$WORK" $(cd "$WORK" && ls sweep_*.log) \
      $(cd "$WORK" && ls sweep/*/final/eval_gold_test*.{json,csv} 2>/dev/null)
    ;;
  *) echo "unknown stage $stage" ;;
  esac
done
echo "[$(since) s] all done"
