#!/bin/sh
# Builds the four model packages deploy/config/experiments.yaml names (two rankers, two retrieval encoders),
# small and from synthetic data, so that a fresh stack has something to serve. In production, export your own
# trained packages into the repository instead (python -m models export / python -m models.retrieval export).
# Usage: train-models.sh [REPOSITORY] [WORKDIR]   (a rerun after a kill continues the rankers' training: --resume)
set -eu
repo="${1:-/models}"
work="${2:-/tmp/mtrank-train}"

python -m models train --model mmoe --dataset synthetic --preset tiny --seeds 0 --no-progress --resume --output "$work/mmoe"
python -m models export "$work/mmoe/seed0/checkpoint.pt" --repository "$repo" --name mmoe --version 1 --overwrite
python -m models train --model mmoe+dml --dataset synthetic --preset tiny --seeds 0 --no-progress --resume --output "$work/mmoe+dml"
python -m models export "$work/mmoe+dml/seed0/checkpoint.pt" --repository "$repo" --name mmoe+dml --version 1 --overwrite

python -m models.retrieval train --out "$work/ssmtl-retrieval-only.pt" --dataset synthetic --baseline
python -m models.retrieval export --checkpoint "$work/ssmtl-retrieval-only.pt" --repository "$repo" --name ssmtl-retrieval-only --version 1
python -m models.retrieval train --out "$work/ssmtl.pt" --dataset synthetic
python -m models.retrieval export --checkpoint "$work/ssmtl.pt" --repository "$repo" --name ssmtl --version 1
