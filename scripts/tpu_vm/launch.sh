#!/usr/bin/env bash
# Run one jaxalign training command on every worker of a Cloud TPU VM slice (after setup.sh).
#   scripts/tpu_vm/launch.sh TPU_NAME ZONE [PROJECT] -- dpo --config configs/dpo_smollm2.yaml \
#       --run-dir /mnt/shared/runs/dpo1 train.steps=1000
# Every worker runs `jaxalign <args> --distributed` in ~/jaxalign: JAX finds the other workers
# itself, the mesh comes from the config's mesh: section (it must span every chip of the slice;
# the default puts them all on fsdp). --run-dir must be a directory every worker sees (a
# Filestore/NFS mount or a gcsfuse bucket): checkpoints are written by all workers together,
# metrics, plots and the exported model by worker 0. Output of every worker streams back here.
# Rerunning the same command resumes from the run's last checkpoint. Not tested here (no TPU).
set -euo pipefail
USAGE_TAIL="-- ALGORITHM --config FILE --run-dir SHARED_DIR [key=value ...]"
source "$(dirname "$0")/common.sh"
[[ ${#REST[@]} -gt 0 ]] || usage "$USAGE_TAIL"
cmd=$(printf ' %q' "${REST[0]}" --distributed "${REST[@]:1}")
on_all_workers "cd ~/jaxalign && .venv/bin/jaxalign${cmd}"
