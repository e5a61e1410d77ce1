#!/usr/bin/env bash
# Creates KServe's own venv for benchmarks/bench_serving_peers.py (default /work/venvs/kserve).
# Never the project venv: kserve 0.21 pins protobuf < 7 and this project needs >= 7. ONNX Runtime is pinned
# to the project's version, so both servers run the same kernels.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
VENV="${1:-/work/venvs/kserve}"
ORT_VERSION="$("$ROOT/.venv/bin/python" -c 'import onnxruntime; print(onnxruntime.__version__)')"
python3 -m venv "$VENV"
"$VENV/bin/python" -m pip install --quiet --upgrade pip
"$VENV/bin/python" -m pip install --quiet "kserve==0.21.0" "onnxruntime==$ORT_VERSION"
"$VENV/bin/python" -c 'from importlib.metadata import version as v; print(*(f"{d} {v(d)}" for d in ("kserve", "onnxruntime", "protobuf", "grpcio")))'
