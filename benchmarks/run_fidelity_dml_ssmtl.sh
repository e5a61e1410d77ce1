#!/usr/bin/env bash
# Issue #16 (model fidelity), DML and SSMTL: every training run behind benchmarks/results/dml.md and ssmtl.md,
# in one go. Independent jobs run in parallel, JOBS at a time (default: the number of CPU cores), one thread
# each; DEVICE=cuda moves the DML runs to a GPU (the graph sampler of SSMTL is numpy and stays on CPU).
# Every benchmark is resumable, so re-running after an interruption only does what is missing.
# REPORT_ONLY=1 skips the training and only merges OUT_DIR/parts/*.json into OUT_DIR/dml.md and ssmtl.md
# (runs of one seed each, e.g. from a job queue, merge the same way: the reports pair runs by seed).
#
#   JOBS=16 DEVICE=cuda benchmarks/run_fidelity_dml_ssmtl.sh [OUT_DIR]     (default OUT_DIR: benchmarks/results)
#   REPORT_ONLY=1 benchmarks/run_fidelity_dml_ssmtl.sh [OUT_DIR]
set -euo pipefail
case "${1:-}" in
  -h|--help) awk 'NR > 1 && !/^#/ { exit } NR > 1 { sub(/^# ?/, ""); print }' "$0"; exit 0 ;;
  -*) echo "run_fidelity_dml_ssmtl: unknown option $1 (see --help)" >&2; exit 2 ;;
esac
cd "$(dirname "$0")/.."
OUT=${1:-benchmarks/results}
JOBS=${JOBS:-$(nproc)}
DEVICE=${DEVICE:-cpu}
DATA=${DATA:-/work/shared/data}
PY=".venv/bin/python"
export OMP_NUM_THREADS=1
mkdir -p "$OUT/parts"

run_jobs() {
  jobs_list=()
  # GKD regularisation choice on ML-100k validation
  jobs_list+=("$PY benchmarks/select_gkd_options.py $DATA/movielens-100k 25 $OUT/dml_gkd_options.json mmoe,gkd,gkd-drop0,gkd-zero,gkd-l2,gkd-all,dml,dml-gkd0,dml-drop0 0,1,2")
  # DML grid: one job per data set x backbone x variant
  for ds in ml-1m-partial:24 ml-100k:40; do
    name=${ds%%:*}; epochs=${ds##*:}
    for bb in mmoe ple; do
      for v in base dml dml-reg; do
        jobs_list+=("$PY -m benchmarks.bench_movielens_dml --data-root $DATA --datasets $name --backbones $bb --variants $v --seeds 5 --max-epochs $epochs --device $DEVICE --output $OUT/parts/dml_${name}_${bb}_${v}")
      done
    done
  done
  # SSMTL: one job per variant
  for v in retrieval-only ssmtl retrieval+cca retrieval+mae; do
    jobs_list+=("$PY -m benchmarks.bench_ssmtl --data-path $DATA/ego-facebook --seeds 5 --steps 3000 --variants $v --out $OUT/parts/ssmtl_$v")
  done

  printf '%s\n' "${jobs_list[@]}" | xargs -P "$JOBS" -I{} sh -c 'nice -n 19 {} > /dev/null'
}
[ "${REPORT_ONLY:-0}" = 1 ] || run_jobs

# merged reports (dml.md also summarises $OUT/dml_gkd_options.json)
shopt -s nullglob
dml_parts=("$OUT"/parts/dml_*.json)
$PY -m benchmarks.bench_movielens_dml --report-only --output "$OUT/dml" --gkd-options "$OUT/dml_gkd_options.json" \
  --also "${dml_parts[@]}" > /dev/null
ssmtl_parts=("$OUT"/parts/ssmtl_*.json)
$PY -m benchmarks.bench_ssmtl --report-only --out "$OUT/ssmtl" --also "${ssmtl_parts[@]}"
echo "wrote $OUT/dml.md (${#dml_parts[@]} DML part files) and $OUT/ssmtl.md (${#ssmtl_parts[@]} SSMTL part files)"
