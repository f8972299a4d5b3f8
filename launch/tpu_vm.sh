#!/usr/bin/env bash
# Cloud TPU VM (single host or pod slice): installs ast_jax with JAX for TPU on every worker and
# runs the study on all of them; jax.distributed.initialize() finds the slice's workers itself.
# WORKDIR should be a bucket path mounted on every worker, or a shared file system.
# Usage: TPU_NAME=my-tpu ZONE=us-central2-b launch/tpu_vm.sh CONFIG WORKDIR [--config.KEY=VALUE ...]
set -euo pipefail
config=${1:?usage: $0 CONFIG WORKDIR [overrides]}; workdir=${2:?usage: $0 CONFIG WORKDIR [overrides]}; shift 2
: "${TPU_NAME:?set TPU_NAME}" "${ZONE:?set ZONE}"
repo=${REPO_DIR:-ast_jax}
gcloud compute tpus tpu-vm scp --recurse --zone "$ZONE" --worker=all . "$TPU_NAME:$repo"
gcloud compute tpus tpu-vm ssh "$TPU_NAME" --zone "$ZONE" --worker=all --command "
  cd $repo && pip install -q 'jax[tpu]' -e . &&
  ast-jax pipeline --distributed --config '$config' --workdir '$workdir' $*"
