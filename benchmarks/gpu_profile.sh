#!/usr/bin/env bash
# The GPU speed study: where the compiled B/16 and L/16 steps spend their time, and what each compile
# setting buys, each beside timm in the same run. One prepared call of about 5 minutes.
#
# On a GPU machine, from the checkout:
#   bash benchmarks/gpu_profile.sh                 # the device tool: timeout_s about 400
# Here, on the CPU, tiny sizes, to check the commands (CI runs this):
#   GPU_CHECK_DRY=1 bash benchmarks/gpu_profile.sh
#
# 1. benchmarks/step_profile.py --variant compile --profile: the step as `mixer-ft finetune` runs it,
#    its kernel time by family (matrix products, elementwise, normalisation, optimizer, copies) and the
#    device's idle share (launch gaps), L/16 b128 and B/16 b256, bf16.
# 2. The same steps with CUDA graphs (reduce-overhead), with inductor's autotuning
#    (max-autotune-no-cudagraphs) and with both (max-autotune, L/16 only: its autotuning is the slowest).
# Every step ends with `rc=N`; a stopped one (rc=124) is a setting too slow to compile in its limit.
# Commit the records (step_profile_*.json) under results/bench/ with the GPU's name.
source "$(dirname "$0")/gpu_common.sh" /tmp/gpu-profile-out profile_log.txt
if [ -n "${GPU_CHECK_DRY:-}" ]; then
  SHAPES=("--model S/32 --batch 4 --img-size 64 --steps 2 --warmup 1 --device cpu"); PROFILED=eager
  VARIANTS=(); LAST=""   # compiling on the CPU would only time the compiler
else
  SHAPES=("--model L/16 --batch 128" "--model B/16 --batch 256"); PROFILED=compile
  VARIANTS=(reduce-overhead max-autotune-no-cudagraphs); LAST="--model L/16 --batch 128"
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>&1 | tee -a "$LOG"
fi
for shape in "${SHAPES[@]}"; do  # word splitting of $shape is meant: it is a list of flags
  # shellcheck disable=SC2086
  run 120 "$PY" benchmarks/step_profile.py $shape --variant "$PROFILED" --profile --out "$OUT"
  for v in "${VARIANTS[@]}"; do
    # shellcheck disable=SC2086
    run 120 "$PY" benchmarks/step_profile.py $shape --variant "$v" --out "$OUT"
  done
done
# shellcheck disable=SC2086
[ -n "$LAST" ] && run 200 "$PY" benchmarks/step_profile.py $LAST --variant max-autotune --out "$OUT"
ls -la "$OUT" | tee -a "$LOG"
