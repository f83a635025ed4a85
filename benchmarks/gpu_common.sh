# Sourced by benchmarks/gpu_check.sh and benchmarks/gpu_soak.sh: what both set up before their steps.
#   source "$(dirname "$0")/gpu_common.sh" DEFAULT_OUT LOG_NAME
# The checkout is the working folder and on PYTHONPATH; $OUT (default DEFAULT_OUT) takes the records and
# the log $OUT/LOG_NAME; $DATA is the CIFAR-10 archive (GPU_CHECK_DATA); $PY the Python (PYTHON).
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
OUT="${OUT:-$1}"; mkdir -p "$OUT"
DATA="${GPU_CHECK_DATA:-.gpu/cifar10-jpeg.tar.gz}"
PY="${PYTHON:-python3}"
LOG="$OUT/$2"
# run LIMIT CMD...: a step that hangs (a stuck compile, say) is stopped at LIMIT seconds (rc=124) so the
# steps after it still run inside the device call's time. The CPU dry run checks commands, not speed:
# it has no limits, so a loaded machine cannot fail it.
run() { local limit=$1; shift; echo "+ $*" | tee -a "$LOG"
        if [ -n "${GPU_CHECK_DRY:-}" ]; then "$@" 2>&1 | tee -a "$LOG"
        else timeout -s INT -k 20 "$limit" "$@" 2>&1 | tee -a "$LOG"; fi
        echo "rc=${PIPESTATUS[0]}" | tee -a "$LOG"; }
