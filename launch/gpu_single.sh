#!/usr/bin/env bash
# One GPU: the study of CONFIG on GPU 0 (or the one named by $GPU).
# Usage: launch/gpu_single.sh CONFIG WORKDIR [--config.KEY=VALUE ...]
set -euo pipefail
config=${1:?usage: $0 CONFIG WORKDIR [overrides]}; workdir=${2:?usage: $0 CONFIG WORKDIR [overrides]}; shift 2
export CUDA_VISIBLE_DEVICES=${GPU:-0}
export XLA_PYTHON_CLIENT_MEM_FRACTION=${XLA_PYTHON_CLIENT_MEM_FRACTION:-0.9}
exec ast-jax pipeline --config "$config" --workdir "$workdir" "$@"
