# Shared by setup.sh and launch.sh: TPU name, zone and optional project from the command line.
# Not tested here (no TPU hardware); see README.md, "Multi-process and TPU VM".
usage() { echo "usage: $0 TPU_NAME ZONE [PROJECT] $1" >&2; exit 2; }
[[ $# -ge 2 ]] || usage "${USAGE_TAIL:-}"
TPU=$1 ZONE=$2
shift 2
GCLOUD_ARGS=(--zone "$ZONE")
if [[ $# -gt 0 && $1 != "--" ]]; then GCLOUD_ARGS+=(--project "$1"); shift; fi
[[ ${1:-} == "--" ]] && shift
REST=("$@")
# One command on every worker of the slice at once (the processes of one run start together).
on_all_workers() { gcloud compute tpus tpu-vm ssh "$TPU" "${GCLOUD_ARGS[@]}" --worker=all --command="$1"; }
