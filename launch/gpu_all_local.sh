#!/usr/bin/env bash
# All GPUs of this machine, data parallel: the mesh axis `data` spans every visible device;
# train.batch_size is the global batch and must be divisible by the number of GPUs.
# Usage: launch/gpu_all_local.sh CONFIG WORKDIR [--config.KEY=VALUE ...]
set -euo pipefail
config=${1:?usage: $0 CONFIG WORKDIR [overrides]}; workdir=${2:?usage: $0 CONFIG WORKDIR [overrides]}; shift 2
nvidia-smi -L
exec ast-jax pipeline --config "$config" --workdir "$workdir" "$@"
