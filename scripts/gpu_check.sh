#!/usr/bin/env bash
# What a CUDA machine adds to the CPU test suite, and the GPU figures of docs/gpu.md:
#
#   bash scripts/gpu_check.sh OUT [STAGE ...]
#
# STAGEs (default: tests suite bench sweep; recipes only when named), run in the order given:
#   tests  the tests marked gpu (CUDA against the CPU)
#   suite  the default suite plus the gpu tests, with a GPU in view (device=auto picks it)
#   bench  benchmarks/rm_throughput.py and rl_vs_trl.py on one GPU, bf16, TRL in the same run
#   sweep  end-to-end mixture reward models on all 2,400 benchmark pairs at each head learning
#          rate in SWEEP_RATES and seed in SWEEP_SEEDS, plus the scalar RM at seed 0 (the check
#          against the CPU's figures; SWEEP_SCALAR=0 leaves it out), SWEEP_PARALLEL at a time on
#          the one GPU (each about 8 GB: float32 weights and AdamW), all stopped SWEEP_DEADLINE
#          seconds after the stage starts; TF32 matmuls unless TF32=0. SWEEP_KEYS adds overrides
#          to every run (a smoke run: "max_train_samples=16 max_eval_samples=16"). Each finished
#          run's evaluation lands in OUT/sweep/ as NAME.json and NAME_pair_scores.csv, with
#          OUT/sweep/sweep.json (every run, finished or not): scripts/gpu_sweep_summary.py
#          --sweep OUT/sweep tabulates them.
#   recipes  the reward models of the plan file RECIPES (default scripts/gpu_recipes.txt: one
#          run per line, its name and the keys it adds to configs/rm_scalar_full.yaml), with
#          the sweep's SWEEP_PARALLEL, SWEEP_DEADLINE, TF32 and SWEEP_KEYS; results in
#          OUT/PLAN/ (PLAN: the file's name without .txt, e.g. OUT/gpu_recipes/) as the sweep's,
#          plus each run's evaluations during training (RUN_evals.jsonl), and PLAN.json:
#          scripts/gpu_recipes_summary.py --runs OUT/PLAN tabulates them.
# Logs and results under OUT; scratch under $WORK.
set -u
OUT=${1:?usage: bash scripts/gpu_check.sh OUT [tests|suite|bench|sweep|recipes ...]}
shift
STAGES=${*:-tests suite bench sweep}
RECIPES=${RECIPES:-scripts/gpu_recipes.txt}
PY=${PY:-python3}
WORK=${WORK:-runs/gpu_check}
SWEEP_RATES=${SWEEP_RATES:-"2e-3 5e-3"}
SWEEP_SEEDS=${SWEEP_SEEDS:-"0 1 2 3"}
SWEEP_DEADLINE=${SWEEP_DEADLINE:-600}
SWEEP_SCALAR=${SWEEP_SCALAR:-1}
SWEEP_PARALLEL=${SWEEP_PARALLEL:-9}
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

# train_runs NAME PLAN: one `rm train configs/rm_scalar_full.yaml` per line "RUN key=value ..."
# of PLAN (# comments, blank lines and Windows line ends allowed; run names unique),
# SWEEP_PARALLEL at a time on the one GPU, all stopped SWEEP_DEADLINE seconds after the stage
# starts. Each finished run's evaluation lands in OUT/NAME/ as RUN.json and
# RUN_pair_scores.csv; every run's evaluations during training (eval_steps) as
# RUN_evals.jsonl, finished or not; OUT/NAME/NAME.json records every run.
train_runs() {
  local name=$1 plan=$2 s0 runs r keys left tf32=true lines names twice
  s0=$(date +%s)
  [ -f "$plan" ] || { echo "no plan file $plan"; return; }
  # the run lines alone: no CR, no comment (whole-line or trailing), each ending in a newline
  lines=$(sed -e 's/\r$//' -e 's/#.*$//' "$plan" | grep -v '^[[:space:]]*$')
  names=$(awk '{print $1}' <<< "$lines")
  runs=$(xargs <<< "$names")
  twice=$(sort <<< "$names" | uniq -d | xargs)
  [ -z "$twice" ] || { echo "$plan: run names used twice: $twice"; return; }
  [ -n "$lines" ] || { echo "$plan: no runs"; return; }
  [ "$SWEEP_PARALLEL" -ge 1 ] 2>/dev/null || { echo "SWEEP_PARALLEL must be >= 1"; return; }
  [ "${TF32:-1}" = 0 ] && tf32=false
  echo "[$(since) s] $name: the model converted once"
  $PY -c 'from distalign.models.load import resolve_model; print(resolve_model())' \
    > "$WORK/convert.log" 2>&1 || { tail -5 "$WORK/convert.log"; return; }
  echo "[$(since) s] $name: $runs, $SWEEP_PARALLEL at a time, until $SWEEP_DEADLINE s"
  mkdir -p "$OUT/$name" && rm -f "$OUT/$name"/*.json "$OUT/$name"/*.csv "$OUT/$name"/*.jsonl
  for r in $runs; do  # a run starts clean: nothing of an earlier sweep in WORK counts
    rm -rf "${WORK:?}/$name/$r" "$WORK/${name}_$r.log"
  done
  while read -r r keys; do
    while [ "$(jobs -rp | wc -l)" -ge "$SWEEP_PARALLEL" ]; do sleep 5; done
    left=$((SWEEP_DEADLINE - ($(date +%s) - s0)))
    if [ "$left" -le 0 ]; then echo "  $r: not started (deadline)"; continue; fi
    # shellcheck disable=SC2086
    OMP_NUM_THREADS=2 timeout "$left" \
      $PY -m distalign.cli rm train configs/rm_scalar_full.yaml $keys save_steps=0 "tf32=$tf32" \
      report_to=none $SWEEP_KEYS "output_dir=$WORK/$name/$r" > "$WORK/${name}_$r.log" 2>&1 \
      < /dev/null &  # not the plan: a run that read its input would eat the lines after it
  done <<< "$lines"
  wait
  echo "[$(since) s] $name: done"
  # shellcheck disable=SC2086
  $PY - "$WORK" "$name" "$OUT/$name" $runs <<'EOF'
import json, shutil, sys
from pathlib import Path
work, name, out, names = Path(sys.argv[1]), sys.argv[2], Path(sys.argv[3]), sys.argv[4:]
rows = {}
for run in names:  # this plan's runs only
    log, final = work / f"{name}_{run}.log", work / name / run / "final"
    summary, metrics = work / name / run / "summary.json", work / name / run / "metrics.jsonl"
    pairs = final / "eval_gold_test_pair_scores.csv"
    row = {"finished": (final / "eval_gold_test.json").is_file() and pairs.is_file()}
    if summary.is_file():
        s = json.loads(summary.read_text())
        row.update(train_seconds=s.get("train_seconds"), pairs_per_s=s.get("pairs_per_s"))
    if metrics.is_file():  # the evaluations during training, kept when the run was cut too
        evals = [line for line in metrics.read_text().splitlines() if '"eval/' in line]
        (out / f"{run}_evals.jsonl").write_text("".join(e + "\n" for e in evals))
        row["evaluations"] = len(evals)
    if row["finished"]:
        shutil.copy(final / "eval_gold_test.json", out / f"{run}.json")
        shutil.copy(pairs, out / f"{run}_pair_scores.csv")
    elif log.is_file():
        row["log_tail"] = log.read_text()[-1500:]
    else:
        row["not_started"] = True
    rows[run] = row
(out / f"{name}.json").write_text(json.dumps(rows, indent=1) + "\n")
for run, row in rows.items():
    print(f"  {run}: {'finished' if row['finished'] else 'did not finish'}, "
          f"{row.get('train_seconds') or 0:.0f} s of training, "
          f"{row.get('evaluations', 0)} evaluations")
EOF
}

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
      --steps 12 --work "$WORK/bench_rm" --out "$OUT/rm_throughput_gpu.json" > "$OUT/bench.log" 2>&1
    echo "  exit $?"
    echo "[$(since) s] bench: one RLOO step, LoRA, bf16, against TRL"
    $PY benchmarks/rl_vs_trl.py --device cuda --bf16 --modes lora --steps 3 \
      --out "$OUT/rl_vs_trl_gpu.json" >> "$OUT/bench.log" 2>&1
    echo "  exit $?"
    ;;
  sweep)
    plan="$WORK/sweep_plan.txt" && : > "$plan"
    [ "$SWEEP_SCALAR" = 1 ] && echo "scalar_s0 head=scalar seed=0" >> "$plan"
    for lr in $SWEEP_RATES; do for s in $SWEEP_SEEDS; do
      echo "lr${lr}_s$s head=mixture n_components=2 head_learning_rate=$lr seed=$s" >> "$plan"
    done; done
    train_runs sweep "$plan"
    ;;
  recipes)  # OUT/<plan's name>/, so that two plans into one OUT keep both
    train_runs "$(basename "$RECIPES" .txt)" "$RECIPES"
    ;;
  *) echo "unknown stage $stage" ;;
  esac
done
echo "[$(since) s] all done"
