#!/usr/bin/env bash
# Set up a fresh checkout: .venv with the CPU build of torch FIRST (a bare `torch`
# requirement would pull a multi-GB CUDA build), then nnshrink with its test and
# benchmark extras, then Fashion-MNIST from Debian's package when it is missing.
# Idempotent: re-running after a successful set-up only checks the stamp.
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${PYTHON:-python3}
stamp=.venv/.nnshrink-setup
want=$(cat pyproject.toml scripts/setup.sh | sha256sum | cut -d' ' -f1)

if [ ! -x .venv/bin/python ]; then
  echo "setup: creating .venv with $($PY --version)"
  "$PY" -m venv .venv
fi
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  .venv/bin/python -m pip install -q --upgrade pip
  echo "setup: installing torch==2.13.0 (CPU build)"
  .venv/bin/python -m pip install -q "torch==2.13.0"
  echo "setup: installing nnshrink with test and benchmark extras"
  .venv/bin/python -m pip install -q -e ".[test,bench]"
  echo "$want" > "$stamp"
fi

data=/usr/share/datasets/fashion-mnist
if [ ! -f "$data/train-images-idx3-ubyte.gz" ] && [ -z "${NNSHRINK_DATA:-}" ]; then
  if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
    echo "setup: installing Fashion-MNIST (apt-get install dataset-fashion-mnist)"
    apt-get update -qq >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dataset-fashion-mnist >/dev/null
  else
    echo "setup: Fashion-MNIST is missing from $data." >&2
    echo "       Install it with: sudo apt-get install dataset-fashion-mnist" >&2
    echo "       or put the four IDX files in a folder and set NNSHRINK_DATA=FOLDER." >&2
    exit 1
  fi
fi
