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
# The dry runs' model where no run is stopped mid-way: a tiny custom Mixer at 32 px (the dry run checks the
# commands, not the model; S/32 at 64 px cost 3.5 s more a fine-tune process here, in its 19 M parameters'
# checkpoints). A run stopped by SIGTERM after a checkpoint keeps S/32: the tiny one would end first.
DRY_MODEL="--set model=\"custom\" --set architecture.patch_size=8 --set architecture.hidden_dim=32 --set architecture.num_blocks=2 --set architecture.tokens_mlp_dim=16 --set architecture.channels_mlp_dim=64 --set architecture.img_size=32"
LOG="$OUT/$2"
# run LIMIT CMD...: a step that hangs (a stuck compile, say) is stopped at LIMIT seconds (rc=124) so the
# steps after it still run inside the device call's time. The CPU dry run checks commands, not speed:
# it has no limits, so a loaded machine cannot fail it.
run() { local limit=$1; shift; echo "+ $*" | tee -a "$LOG"
        if [ -n "${GPU_CHECK_DRY:-}" ]; then "$@" 2>&1 | tee -a "$LOG"
        else timeout -s INT -k 20 "$limit" "$@" 2>&1 | tee -a "$LOG"; fi
        echo "rc=${PIPESTATUS[0]}" | tee -a "$LOG"; }
# finetune NAME STEPS MODEL BATCH CKPT [SIGTERM_AFTER_CHECKPOINT_STEP]: the in21k recipe from random weights on
# $DATA into $RUNS/NAME (record in $OUT), stopped by SIGTERM once that step's checkpoint exists and then
# resumed by the same command, or straight through. $EVAL and $LOGE set the minival and log intervals;
# $FT_EXTRA adds flags, $FT_PYFLAGS Python's own (-P: the package from PYTHONPATH, not the checkout); with $FT_WATCH set, benchmarks/cpu_watch.py records what used the CPU meanwhile
# ($OUT/watch_NAME.json, and watch_NAME_resumed.json for the resumed part); $FT_LIMIT: seconds (480).
finetune() {
  local name=$1 steps=$2 model=$3 batch=$4 ckpt=$5 stop_at=${6:-}
  # shellcheck disable=SC2086
  local cmd=("$PY" ${FT_PYFLAGS:-} -m mixer_ft finetune --recipe recipes/in21k_l16_cifar10.toml --upstream none $model
             --dataset "$DATA" --steps "$steps" --batch "$batch" --warmup 10 --eval-every "$EVAL"
             --output-dir "$RUNS/$name" --set checkpoint_every="$ckpt" --set log_every="$LOGE"
             --set results_dir="\"$OUT\"" --set name="$name" ${FT_EXTRA:-})
  local watch=() resumed=()
  if [ -n "${FT_WATCH:-}" ]; then
    watch=("$PY" benchmarks/cpu_watch.py --out "$OUT/watch_$name.json" --)
    resumed=("$PY" benchmarks/cpu_watch.py --out "$OUT/watch_${name}_resumed.json" --)
  fi
  if [ -n "$stop_at" ]; then
    echo "+ ${cmd[*]} (SIGTERM after the checkpoint of step $stop_at)" | tee -a "$LOG"
    "${watch[@]}" "${cmd[@]}" >> "$LOG" 2>&1 &
    local pid=$! mark; mark=$(printf "%s/%s/checkpoints/step_%08d.pt.sha256" "$RUNS" "$name" "$stop_at")
    while kill -0 "$pid" 2>/dev/null && [ ! -f "$mark" ]; do sleep 0.2; done
    # The watch passes SIGTERM on to the run (the run is its child: signal the whole group is not needed)
    kill -TERM "$pid" 2>/dev/null; wait "$pid"; echo "stopped rc=$? (143 expected)" | tee -a "$LOG"
    watch=("${resumed[@]}")
  fi
  run "${FT_LIMIT:-480}" "${watch[@]}" "${cmd[@]}"
}
