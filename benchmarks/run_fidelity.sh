#!/usr/bin/env bash
# Issue 16 (model fidelity), CSRec and GRec: every training run behind benchmarks/results/csrec.md and grec.md.
#
#   benchmarks/run_fidelity.sh [cpu|cuda] [jobs]
#
# Runs, each niced and single-threaded, at most `jobs` processes at a time (default 2; the CPU machines have two
# shared cores), each writing its own partial results under $WORK (default /tmp/mtrank-fidelity), then merges the
# partial files into benchmarks/results/ with --resume (no retraining). On a GPU machine pass `cuda 8`.
#   1. CSRec's reverse ratio (not given by the paper) chosen on validation, seed 0: 0.1 / 0.3 / 0.5.
#   2. Census-income, CSRec Table 4: mmoe, ple, sparse-sharing, csrec (+ ablations csrec-at, csrec-cl,
#      csrec-flip-both), seeds 0-4.
#   3. GRec Table 1 on the multi-flow world: token, sentence, task, task_sentence routing, mmoe and a
#      parameter-matched mmoe, seeds 0-4.
#   4. GRec on census-income for reference: token, task_sentence, mmoe, mmoe-matched, seeds 0-4.
set -euo pipefail
case "${1:-}" in
  -h|--help) awk 'NR > 1 && !/^#/ { exit } NR > 1 { sub(/^# ?/, ""); print }' "$0"; exit 0 ;;
esac
cd "$(dirname "$0")/.."
DEVICE=${1:-cpu}
JOBS=${2:-2}
if [[ ! $DEVICE =~ ^(cpu|cuda)$ || ! $JOBS =~ ^[1-9][0-9]*$ ]]; then
  echo "run_fidelity: usage: benchmarks/run_fidelity.sh [cpu|cuda] [jobs] (got '$*'; see --help)" >&2
  exit 2
fi
WORK=${WORK:-/tmp/mtrank-fidelity}
CENSUS=${CENSUS:-../shared/data/census-income-kdd}
PY=".venv/bin/python"
mkdir -p "$WORK"
export OMP_NUM_THREADS=1

run() {  # run <log name> <module> <args...>: background job, at most $JOBS at once
  while [ "$(jobs -rp | wc -l)" -ge "$JOBS" ]; do sleep 5; done
  local log="$WORK/$1.log"; shift
  echo "$(date +%T) start: $*" | tee -a "$WORK/commands.txt"
  nice -n 19 "$PY" -m "$@" --device "$DEVICE" >"$log" 2>&1 &
}

# 1. reverse-ratio sweep (validation AUC decides; the chosen value is csrec's default in bench_census_csrec)
for r in 0.1 0.3 0.5; do
  run "sweep_r$r" benchmarks.bench_census_csrec --data "$CENSUS" --models csrec --seeds 0 \
    --override "reverse_ratio=$r" --suffix="-r$r" --output "$WORK" --name "sweep_r$r"
done
# 2. CSRec Table 4, one process per model family (merged below)
for group in "mmoe ple" "sparse-sharing csrec" "csrec-at csrec-cl" "csrec-flip-both"; do
  run "csrec_${group// /_}" benchmarks.bench_census_csrec --data "$CENSUS" --models $group \
    --output "$WORK" --name "csrec_${group// /_}"
done
# 3. GRec on the multi-flow world
for group in "token mmoe mmoe-matched" "task_sentence" "sentence" "task"; do
  run "grec_mf_${group// /_}" benchmarks.bench_grec_routing --dataset multiflow --variants $group \
    --output "$WORK" --name "grec_mf_${group// /_}"
done
# 4. GRec on census-income (reference)
run grec_census benchmarks.bench_grec_routing --dataset census --data "$CENSUS" \
  --variants token task_sentence mmoe mmoe-matched --output "$WORK" --name grec_census
wait

# merge (no training: every (model, seed) is already in the partial files)
"$PY" -m benchmarks.bench_census_csrec --data "$CENSUS" --models csrec --seeds \
  --resume "$WORK"/sweep_r*.json --output benchmarks/results --name csrec_reverse_ratio_sweep
"$PY" -m benchmarks.bench_census_csrec --data "$CENSUS" --models mmoe --seeds \
  --resume "$WORK"/csrec_*.json --output benchmarks/results --name census_csrec
"$PY" -m benchmarks.bench_grec_routing --dataset multiflow --variants mmoe --seeds \
  --resume "$WORK"/grec_mf_*.json --output benchmarks/results --name grec_routing_multiflow
"$PY" -m benchmarks.bench_grec_routing --dataset census --data "$CENSUS" --variants mmoe --seeds \
  --resume "$WORK"/grec_census.json --output benchmarks/results --name grec_routing_census
