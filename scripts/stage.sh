# shellcheck shell=bash
# stage OUTPUT LOG command...: run one stage of a measurement script unless OUTPUT exists,
# its output in $LOGS/LOG.log and its wall time appended to $LOGS/seconds.tsv. A training
# stage (OUTPUT .../final) stopped after its first checkpoint carries on from it. Sourced by
# scripts/measure_level2.sh and scripts/measure_estimators.sh, which set LOGS.
stage() {
  local out=$1 log=$2
  shift 2
  if [ -e "$out" ]; then echo "skip $log ($out exists)"; return 0; fi
  local t0=$SECONDS
  echo "$(date +%T) $log"
  local resume=()
  if [[ $out == */final && -d "$(dirname "$out")/checkpoints/last" ]]; then
    resume=(resume_from_checkpoint=true)
  fi
  "$@" "${resume[@]}" > "$LOGS/$log.log" 2>&1 || echo "FAILED $log ($LOGS/$log.log)"
  echo "$(date +%T) $log done in $((SECONDS - t0)) s"
  printf '%s\t%s\n' "$log" $((SECONDS - t0)) >> "$LOGS/seconds.tsv"
}
