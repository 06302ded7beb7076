#!/usr/bin/env bash
# Copy this checkout to every worker of a Cloud TPU VM slice and install it with jax[tpu].
#   scripts/tpu_vm/setup.sh TPU_NAME ZONE [PROJECT]
# Each worker gets ~/jaxalign with a Python 3.11 virtual environment (made by uv, which also
# fetches Python 3.11 where the image has an older one), then checks that the processes of the
# slice find each other. Not tested here (no TPU hardware).
set -euo pipefail
source "$(dirname "$0")/common.sh"
repo=$(cd "$(dirname "$0")/../.." && pwd)
tgz=$(mktemp --suffix=.tgz)
trap 'rm -f "$tgz"' EXIT
tar -C "$repo" --exclude=.venv --exclude=runs --exclude=.git --exclude='__pycache__' -czf "$tgz" .
gcloud compute tpus tpu-vm scp "$tgz" "$TPU":jaxalign.tgz "${GCLOUD_ARGS[@]}" --worker=all
on_all_workers '
set -e
mkdir -p ~/jaxalign && tar -C ~/jaxalign -xzf ~/jaxalign.tgz && rm ~/jaxalign.tgz
python3 -m pip install --user -q uv
~/.local/bin/uv venv -q --python 3.11 --allow-existing ~/jaxalign/.venv
~/.local/bin/uv pip install -q --python ~/jaxalign/.venv/bin/python "jax[tpu]" -e ~/jaxalign
~/jaxalign/.venv/bin/python -c "import jax; jax.distributed.initialize(); print(f\"worker {jax.process_index()} of {jax.process_count()}: {jax.local_device_count()} of {jax.device_count()} devices\")"
'
