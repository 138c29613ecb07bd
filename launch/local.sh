#!/usr/bin/env bash
# Single host (CPU or all local GPUs): launch/local.sh CONFIG WORKDIR [--config.x=y ...]
#   launch/local.sh configs/moco.py:cpu /tmp/cxr_moco
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
config=${1:?usage: launch/local.sh CONFIG WORKDIR [flags]}
workdir=${2:?usage: launch/local.sh CONFIG WORKDIR [flags]}
shift 2
python=${PYTHON:-.venv/bin/python}
exec "$python" -m cxr_jax.main --config="$config" --workdir="$workdir" "$@"
