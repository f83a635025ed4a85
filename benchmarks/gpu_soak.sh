#!/usr/bin/env bash
# The GPU soak: the in21k L/16 recipe as a long run really goes, in one prepared call of about 8 minutes.
#
# On a GPU machine, from the checkout, with the data copied into .gpu/ (a folder git ignores):
#   mkdir -p .gpu && cp ../shared/data/cifar10-jpeg.tar.gz .gpu/
#   bash benchmarks/gpu_soak.sh                   # the device tool: carry [".gpu"], timeout_s about 540
# Here, on the CPU, tiny sizes, to check the commands (CI runs this):
#   GPU_CHECK_DRY=1 GPU_CHECK_DATA=../shared/data/cifar10-jpeg.tar.gz bash benchmarks/gpu_soak.sh
#
# 1. soak: the recipe from random weights on the real CIFAR-10 JPEGs for SOAK_STEPS steps, minival every
#    200 and a checkpoint every 300 (every third of the run, if shorter); SIGTERM after the first
#    checkpoint, then the same command resumes (a warm compile cache) and finishes. Its record's history
#    has images/s and (CUDA) peak memory per log window, time in evaluation and in checkpoints, graph
#    breaks and compiled graphs; benchmarks/cpu_watch.py records what used the CPU meanwhile.
# 2. resume equality, on B/16 (cheaper): one run straight through, one stopped by SIGTERM and resumed;
#    their final weights compared. SOAK_PARTS=soak leaves it out (gpu_speed.sh has it too).
# 3. benchmarks/soak_report.py writes soak_<device>.json: steady images/s (drift), flat memory, the
#    overheads, slow windows, and the resumed-equals-uninterrupted difference.
# Every step ends with a line `rc=N`. Commit the records under results/bench/ with the GPU's name.
source "$(dirname "$0")/gpu_common.sh" /tmp/gpu-soak-out soak_log.txt
RUNS="$(mktemp -d "${TMPDIR:-/tmp}/gpu-soak-runs.XXXXXX")"
if [ -n "${GPU_CHECK_DRY:-}" ]; then
  SOAK_STEPS="${SOAK_STEPS:-12}"; EVAL=4; CKPT=6; LOGE=2; BATCH=8; SOAK_MODEL="--model S/32 --set architecture.img_size=64"
  EQ_STEPS=8; EQ_MODEL="--model S/32 --set architecture.img_size=64"; EQ_BATCH=8  # slow enough to stop mid-run
else
  SOAK_STEPS="${SOAK_STEPS:-900}"; EVAL=200; CKPT=$(( SOAK_STEPS >= 900 ? 300 : SOAK_STEPS / 3 )); LOGE=25; BATCH=512
  SOAK_MODEL="--model L/16"
  EQ_STEPS=240; EQ_MODEL="--model B/16"; EQ_BATCH=256
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>&1 | tee -a "$LOG"
fi
[ -f "$DATA" ] || { echo "no data at $DATA: copy ../shared/data/cifar10-jpeg.tar.gz there" | tee -a "$LOG"; echo "rc=1"; exit 1; }
FT_WATCH=1 finetune soak "$SOAK_STEPS" "$SOAK_MODEL" "$BATCH" "$CKPT" "$CKPT"
if [ "${SOAK_PARTS:-soak equality}" != soak ]; then
  finetune straight "$EQ_STEPS" "$EQ_MODEL" "$EQ_BATCH" $((EQ_STEPS / 2))
  finetune resumed "$EQ_STEPS" "$EQ_MODEL" "$EQ_BATCH" $((EQ_STEPS / 2)) $((EQ_STEPS / 2))
fi
run 60 "$PY" benchmarks/soak_report.py --records "$OUT" --runs "$RUNS" --out "$OUT"
rm -rf "$RUNS"
