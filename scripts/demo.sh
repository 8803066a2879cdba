#!/usr/bin/env bash
# The whole pipeline on the embedded defaults (about 20 min on a 2-core CPU with bfloat16
# hardware, 27–30 min in float32):
# reward models (scalar, ordinal) -> REINFORCE (moving average + scalar RM, RLOO + scalar RM,
# RLOO + CVaR of the ordinal RM) -> comparison with SFT -> report.
# A finished stage (its output exists) is reused, a stopped one resumed; FORCE=1 redoes
# everything.
# PROFILE=full (make demo-full): more pairs, more steps, more prompts, one more variant
# (RLOO + mean − std of the ordinal RM); several hours on this CPU.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${VENV:-.venv}"
DA="$VENV/bin/distalign"
OUT=runs/demo
RM_X="" RL_X="" CMP_X="max_eval_samples=32 num_generations=4" RUNS="ma_scalar rloo_scalar rloo_cvar"
if [ "${PROFILE:-}" = full ]; then
  OUT=runs/demo-full
  RM_X="max_train_samples=1200 max_eval_samples=400 max_length=384 max_prompt_length=128"
  RL_X="per_device_train_batch_size=16 max_steps=40 eval_steps=10 save_steps=10 max_eval_samples=32 max_completion_length=96"
  CMP_X="max_eval_samples=80 num_generations=4 max_completion_length=96"
  RUNS="$RUNS rloo_mstd"
fi
# bfloat16 compute where the hardware has it (AMX or AVX512-BF16 CPUs, Ampere+ GPUs: about
# twice as fast as float32), else float32; BF16=0 or BF16=1 decides instead
if [ -z "${BF16:-}" ]; then
  BF16=$("$VENV/bin/python" -c 'from distalign.models.load import native_bf16; print(int(native_bf16()))' | tail -n 1) \
    || { echo "could not ask torch about bfloat16 hardware: float32" >&2; BF16=0; }
fi
case "$BF16" in
  0) PRECISION=float32 ;;
  1) PRECISION=bfloat16 RM_X="bf16=true $RM_X" RL_X="bf16=true $RL_X" CMP_X="dtype=bfloat16 $CMP_X" ;;
  *) echo "BF16 must be 0 or 1, got '$BF16'" >&2; exit 2 ;;
esac
if [ "${FORCE:-0}" = 1 ]; then rm -rf "$OUT"; fi
# finished stages are reused and stopped ones resumed: only under the precision they began in
# (a demo folder from before this file was written computed in float32)
made=$(cat "$OUT/precision" 2>/dev/null || { [ -d "$OUT/rm_scalar" ] && echo float32; } || true)
if [ -n "$made" ] && [ "$made" != "$PRECISION" ]; then
  echo "$OUT was made in $made, and this run computes in $PRECISION:" \
    "FORCE=1 redoes it, or BF16=$([ "$PRECISION" = float32 ] && echo 1 || echo 0) carries on" >&2
  exit 2
fi
mkdir -p "$OUT"
echo "$PRECISION" > "$OUT/precision"
start=$(date +%s) last=$(date +%s) name="" TIMES=""
# each stage's wall time, listed at the end (where the demo's time goes)
lap() { local now; now=$(date +%s); [ -n "$name" ] && TIMES="$TIMES$(printf '%6ss  %s' $((now - last)) "$name")
"; last=$now; }
stage() { lap; name="$*"; echo; echo "== [$(( ($(date +%s) - start) / 60 )) min] $*"; }
done_or() { if [ -e "$1" ]; then echo "   reusing $1"; return 1; fi; }
# a stage stopped after its first checkpoint carries on from it
resume_of() { if [ -d "$1/checkpoints/last" ]; then echo "resume_from_checkpoint=true"; fi; }

echo "compute precision: $PRECISION$([ "$BF16" = 1 ] && echo ' (bf16=true, dtype=bfloat16)')"
stage "the default model (SmolLM2-135M-Instruct from the embedded GGUF, converted once)"
$DA model prepare
stage "one prompt"
$DA generate prompts='[Explain in two sentences why the sky is blue.]' max_completion_length=64 temperature=0
stage "the data: the shipped gold-judge benchmark, and a small HH-style file"
# (written to files first: piping into head would cut the command off mid-write)
$DA data inspect gold dataset_split=train > "$OUT/inspect_gold.txt"
head -n 8 "$OUT/inspect_gold.txt"
$DA data inspect examples/hh_sample.jsonl.gz > "$OUT/inspect_hh.txt"
head -n 4 "$OUT/inspect_hh.txt"

stage "reward model 1/2: scalar Bradley-Terry"
done_or $OUT/rm_scalar/final && $DA rm train configs/rm_demo_scalar.yaml output_dir=$OUT/rm_scalar $RM_X $(resume_of $OUT/rm_scalar)
stage "reward model 2/2: ordinal distributional"
done_or $OUT/rm_ordinal/final && $DA rm train configs/rm_demo_ordinal.yaml output_dir=$OUT/rm_ordinal $RM_X $(resume_of $OUT/rm_ordinal)

for run in $RUNS; do
  stage "REINFORCE: $run"
  case $run in
    rloo_mstd) cfg=configs/rl_demo_rloo_cvar.yaml; extra="functional=mean_minus_std kappa=1.0" ;;
    *) cfg=configs/rl_demo_$run.yaml; extra="" ;;
  esac
  rm_dir=$OUT/rm_scalar/final
  case $run in rloo_cvar|rloo_mstd) rm_dir=$OUT/rm_ordinal/final ;; esac
  done_or $OUT/rl_$run/final && $DA rl train $cfg reward=$rm_dir output_dir=$OUT/rl_$run $extra $RL_X $(resume_of $OUT/rl_$run)
done
POLICIES=""
for run in $RUNS; do POLICIES="$POLICIES --policy $run=$OUT/rl_$run/final"; done

stage "comparison with SFT on held-out prompts, and the report"
# shellcheck disable=SC2086
done_or $OUT/compare/compare.json && $DA eval compare $POLICIES \
  --reward scalar=$OUT/rm_scalar/final --reward ordinal=$OUT/rm_ordinal/final \
  --run $OUT/rl_rloo_scalar --rm-run $OUT/rm_scalar --rm-run $OUT/rm_ordinal \
  max_completion_length=48 output_dir=$OUT/compare $CMP_X
OUT=$OUT "$VENV/bin/python" - <<'PY'
import json
import os
s = json.load(open(os.environ["OUT"] + "/compare/compare.json"))
for rm in ("rm_scalar", "rm_ordinal"):
    e = json.load(open(f"{os.environ['OUT']}/{rm}/summary.json"))["eval"]
    print(f"{rm:11} held-out accuracy {e['accuracy']:.3f} on {e['pairs']} pairs"
          f" (Bayes ceiling on them {e.get('bayes_ceiling', float('nan')):.3f})")
    if "contested_auroc" in e:  # can it tell the pairs whose annotator groups disagree?
        lo, hi = e["contested_auroc_ci95"]
        print(f"{'':11} contested pairs flagged: AUROC {e['contested_auroc']:.3f} [{lo:.3f}, {hi:.3f}]"
              f" by {e['contested_detector']} (by -|margin| alone {e['contested_auroc_margin']:.3f})")
    if "spread_spearman_centred" in e:  # does its spread track disagreement beyond length?
        print(f"{'':11} predicted std vs annotator disagreement over {e['spread_replies']} replies:"
              f" Spearman centred {e['spread_spearman_centred']:.3f},"
              f" given length {e['spread_partial_centred_given_length']:.3f},"
              f" raw {e['spread_spearman_raw']:.3f}")
rms = [k[3:-5] for k in next(iter(s["policies"].values())) if k.startswith("rm_") and k.endswith("_mean")]
print(f"\n{s['prompts']} held-out prompts x {s['replies_per_policy'] // s['prompts']} replies per policy")
head = f"{'policy':12} {'gold win rate vs SFT [95% CI]':30} {'gold':>6} {'concise':>8} {'thorough':>8}"
print(head + "".join(f" {'RM ' + m:>11}" for m in rms) + f" {'KL':>6}")
for name, r in s["policies"].items():
    lo, hi = r["gold_win_rate_ci95"]
    rate = "reference" if name == "sft" else f"{r['gold_win_rate']:.3f} [{lo:.3f}, {hi:.3f}]"
    line = f"{name:12} {rate:30} {r['gold_mean']:6.3f}"
    line += f" {r['gold_concise']:8.3f} {r['gold_thorough']:8.3f}"
    print(line + "".join(f" {r['rm_' + m + '_mean']:11.3f}" for m in rms) + f" {r['kl_to_sft']:6.2f}")
for rm, m in (s.get("std_vs_disagreement") or {}).items():
    if m:  # over every compared reply (the policies' and SFT's)
        print(f"RM {rm}: predicted std vs disagreement over the compared replies: Spearman"
              f" centred {m['spearman_centred']:.3f}, given length"
              f" {m['partial_centred_given_length']:.3f}, raw {m['spearman_raw']:.3f}")
PY
lap
echo
echo "report: $OUT/compare/report.html   (numbers: $OUT/compare/compare.json)"
echo "stages:"
printf "%b" "$TIMES"
total=$(( $(date +%s) - start ))
echo "wall time: $((total / 60)) min $((total % 60)) s"
