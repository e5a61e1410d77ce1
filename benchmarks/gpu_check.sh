#!/usr/bin/env bash
# GPU check of the serving path: on a machine with CUDA, installs what it needs, asserts that ONNX Runtime's CUDA
# provider really runs the graph (session providers and the nodes of a profiled run, since onnxruntime-gpu falls
# back to CPU silently), checks parity with CPU outputs, and measures raw ORT (CUDA, IO binding) and the ranker end
# to end at batch 1/100/500 and concurrency 1/16/64, writing one results file (benchmarks/gpu_check.py does it).
# Without a GPU it says so and exits 0 having measured nothing; --cpu-dry-run runs the same Python code on
# CPUExecutionProvider (what tests/benchmarks/test_gpu_check.py exercises here).
#
# Usage: benchmarks/gpu_check.sh [--cpu-dry-run] [--quick] [--out FILE] [--wheelhouse DIR]
#   --out FILE        results file (default benchmarks/results/gpu_check.md, or gpu_check_cpu_dry_run.md)
#   --wheelhouse DIR  install from these wheels only (machines without a package index)
#   --quick           batches 1/100, concurrency 1/4, 40 calls: checks the path, not a measurement
set -euo pipefail
cd "$(dirname "$0")/.."

MODE=cuda OUT="" WHEELHOUSE="" EXTRA=()
while [[ $# -gt 0 ]]; do
  case "$1" in
    --cpu-dry-run) MODE=cpu ;;
    --quick) EXTRA+=(--quick) ;;
    --out) OUT="$2"; shift ;;
    --wheelhouse) WHEELHOUSE="$2"; shift ;;
    -h|--help) awk 'NR > 1 && !/^#/ { exit } NR > 1 { sub(/^# ?/, ""); print }' "$0"; exit 0 ;;
    *) echo "gpu_check: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
  shift
done
if [[ -z "$OUT" && $MODE == cpu ]]; then OUT=benchmarks/results/gpu_check_cpu_dry_run.md; fi
if [[ -z "$OUT" ]]; then OUT=benchmarks/results/gpu_check.md; fi
PIP_SOURCE=()
[[ -z "$WHEELHOUSE" ]] || PIP_SOURCE=(--no-index --find-links "$WHEELHOUSE")

if [[ $MODE == cuda ]]; then
  if ! command -v nvidia-smi >/dev/null 2>&1 || ! nvidia-smi -L 2>/dev/null | grep -q '^GPU'; then
    echo "gpu_check: SKIPPED, no CUDA device on this machine (nvidia-smi is missing or lists no GPU); nothing was"
    echo "measured and no results file was written. 'benchmarks/gpu_check.sh --cpu-dry-run' runs the same checks"
    echo "and measurements on CPUExecutionProvider."
    exit 0
  fi
  nvidia-smi -L
fi

# The project's own environment (as 'make test' builds it): onnxruntime-gpu, grpcio, torch (exports the model).
PY="${PYTHON:-.venv/bin/python}"
if [[ ! -x "$PY" ]]; then
  echo "gpu_check: creating .venv with the project's dependencies"
  python3 -m venv .venv
  PY=.venv/bin/python
  "$PY" -m pip install --quiet "${PIP_SOURCE[@]}" -e .
fi

if [[ $MODE == cuda ]]; then
  # onnxruntime-gpu loads CUDA 13 / cuDNN 9 user-space libraries at session creation; without them it runs on
  # CPU. Use the system's when the loader finds them, else NVIDIA's wheels (the package's cuda/cudnn extras).
  if ! ldconfig -p 2>/dev/null | grep -q 'libcudnn.so.9' && ! "$PY" -c 'import nvidia.cudnn' 2>/dev/null; then
    ORT_VERSION="$("$PY" -c 'from importlib.metadata import version; print(version("onnxruntime-gpu"))')"
    echo "gpu_check: installing CUDA/cuDNN runtime wheels for onnxruntime-gpu $ORT_VERSION"
    "$PY" -m pip install --quiet "${PIP_SOURCE[@]}" "onnxruntime-gpu[cuda,cudnn]==$ORT_VERSION" || {
      echo "gpu_check: FAILED to install onnxruntime-gpu[cuda,cudnn]==$ORT_VERSION (no package index here? pass" >&2
      echo "--wheelhouse DIR with those wheels)" >&2
      exit 1
    }
  fi
  # Make the wheels' libraries visible to ONNX Runtime here and in the ranker process it starts.
  NVIDIA_LIBS="$("$PY" - <<'PY'
import pathlib
try:
    import nvidia
except ImportError:
    raise SystemExit(0)
print(":".join(sorted(str(p) for root in nvidia.__path__ for p in pathlib.Path(root).glob("*/lib"))))
PY
)"
  export LD_LIBRARY_PATH="${NVIDIA_LIBS}${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
fi

exec "$PY" benchmarks/gpu_check.py --provider "$MODE" --out "$OUT" "${EXTRA[@]}"
