#!/usr/bin/env bash
# Multi-host Cloud TPU VM (v4/v5e/v5p pods): runs the same command on every worker.
# jax.distributed.initialize() discovers the pod topology on TPU VMs by itself. Use a gs://
# workdir and data_dir so all hosts share checkpoints and data.
#
#   launch/tpu_vm.sh my-tpu us-central2-b configs/moco.py gs://bucket/runs/moco_r50 \
#       --config.data.data_dir=gs://bucket/tfds
set -euo pipefail
tpu=${1:?usage: launch/tpu_vm.sh TPU_NAME ZONE CONFIG WORKDIR [flags]}
zone=${2:?usage: launch/tpu_vm.sh TPU_NAME ZONE CONFIG WORKDIR [flags]}
config=${3:?usage: launch/tpu_vm.sh TPU_NAME ZONE CONFIG WORKDIR [flags]}
workdir=${4:?usage: launch/tpu_vm.sh TPU_NAME ZONE CONFIG WORKDIR [flags]}
shift 4
extra=$(printf ' %q' "$@")
repo_dir=${REPO_DIR:-\$HOME/cxr_jax}
gcloud compute tpus tpu-vm ssh "$tpu" --zone="$zone" --worker=all --command="
  cd $repo_dir && .venv/bin/python -m cxr_jax.main --multihost \
    --config=$config --workdir=$workdir $extra"
