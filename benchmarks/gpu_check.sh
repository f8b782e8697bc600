#!/usr/bin/env bash
# The GPU check (issue 16): every CUDA path of nnshrink once, each step's time printed
# beside the same step's CPU figure from benchmarks/results/, in one JSON with the card's
# name. Under 5 minutes on an H200-class machine; exits nonzero when any step fails.
#
#   bash benchmarks/gpu_check.sh [OUT.json]        # default: $OUT/gpu_check.json, else ./gpu_check.json
#
# From a fresh clone: the interpreter needs nnshrink's dependencies and a CUDA build of
# torch. scripts/setup.sh installs the CPU build, so on a GPU machine either point PYTHON
# at an interpreter that has CUDA torch (PYTHON=/usr/bin/python3 bash benchmarks/gpu_check.sh)
# or run `bash scripts/setup.sh` and then replace torch in .venv with the CUDA build of
# torch 2.13.0. Fashion-MNIST must be installed (scripts/setup.sh does it).
# Extra arguments after OUT.json go to the driver (e.g. --only lenet5_train,bwn_epoch).
# On a CPU, `python benchmarks/gpu_check.py --device cpu --quick --json OUT.json` checks the
# script itself in seconds (tests/test_gpu_check.py does).
set -euo pipefail
json=$(realpath -m "${1:-${OUT:-.}/gpu_check.json}")  # relative to where it is called from
shift || true
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
[ -x "$PY" ] || PY=python3
echo "gpu_check: $("$PY" -c 'import torch; print("torch", torch.__version__, "cuda", torch.version.cuda, "available", torch.cuda.is_available())')" >&2
exec "$PY" benchmarks/gpu_check.py --device cuda --json "$json" "$@"
