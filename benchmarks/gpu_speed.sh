#!/usr/bin/env bash
# The GPU speed check: the fine-tune against its bare training step, a warm start, and the L/16 step's
# profile, each beside what it is compared with, in one prepared call of about 8 minutes.
#
# On a GPU machine, from the checkout, with the data and the code to compare against in .gpu/:
#   mkdir -p .gpu/before && cp ../shared/data/cifar10-jpeg.tar.gz .gpu/
#   git archive 45edcd3 mixer_ft | tar -x -C .gpu/before      # the fine-tune as 0.1.0 ran it
#   bash benchmarks/gpu_speed.sh                  # the device tool: carry [".gpu"], timeout_s about 560
# Here, on the CPU, tiny sizes, to check the commands (CI runs this):
#   GPU_CHECK_DRY=1 GPU_CHECK_DATA=../shared/data/cifar10-jpeg.tar.gz bash benchmarks/gpu_speed.sh
#
# 1. benchmarks/host_step.py: the host's work of one step, piece by piece, 0.1.0's way beside today's.
# 2. `mixer-ft bench` of B/16 (batch 256): the bare compiled step, the fine-tune's ceiling.
# 3. The in21k recipe with B/16 (batch 256) on the real CIFAR-10 JPEGs, each under benchmarks/cpu_watch.py:
#    "straight" (a cold compile), "resumed" (SIGTERM after the checkpoint of step 120, then resumed: two
#    warm starts), "before" (0.1.0's code from .gpu/before, a warm start), "graphs" (compile =
#    "reduce-overhead": the step as CUDA graphs).
# 4. benchmarks/speed_report.py: speed_<device>.json, the fine-tune over its bare step, every window of
#    every run (a slow one is under 0.8x the run's median), the CPU beside the slow windows, and whether the
#    resumed run's weights equal the uninterrupted run's.
# 5. benchmarks/step_profile.py: L/16 (batch 128) compiled, profiled by kernel family; then as CUDA graphs.
# Every step ends with a line `rc=N`. Commit the records under results/bench/ with the GPU's name.
source "$(dirname "$0")/gpu_common.sh" /tmp/gpu-speed-out speed_log.txt
RUNS="$(mktemp -d "${TMPDIR:-/tmp}/gpu-speed-runs.XXXXXX")"
BEFORE="$(realpath -m "${GPU_SPEED_BEFORE:-.gpu/before}")"
if [ -n "${GPU_CHECK_DRY:-}" ]; then
  DEV=cpu; HOST="--model S/32 --batch 16 --images 500 --repeats 3"; BENCH="--model S/32 --batch 8 --steps 2"
  EQ_STEPS=12; EQ_MODEL="--model S/32 --set architecture.img_size=64"  # slow enough to stop after its checkpoint
  BEFORE_MODEL="$DRY_MODEL"; GRAPHS_MODEL="$DRY_MODEL"  # compiles in seconds on a CPU
  EQ_BATCH=8; EVAL=4; LOGE=2
  L16="--model S/32 --batch 4 --img-size 64 --steps 2 --warmup 1 --device cpu"; PROFILED=eager; GRAPHS=""
else
  DEV=cuda; HOST="--model B/16 --batch 256"; BENCH="--model B/16 --batch 256"
  EQ_STEPS=240; EQ_MODEL="--model B/16"; EQ_BATCH=256; EVAL=200; LOGE=25; GRAPHS_MODEL="$EQ_MODEL"; BEFORE_MODEL="$EQ_MODEL"
  L16="--model L/16 --batch 128"; PROFILED=compile; GRAPHS=reduce-overhead
  nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv 2>&1 | tee -a "$LOG"
fi
[ -f "$DATA" ] || { echo "no data at $DATA: copy ../shared/data/cifar10-jpeg.tar.gz there" | tee -a "$LOG"; echo "rc=1"; exit 1; }
# shellcheck disable=SC2086
run 90 "$PY" benchmarks/host_step.py $HOST --device $DEV --out "$OUT"
# shellcheck disable=SC2086
run 150 "$PY" -m mixer_ft bench $BENCH --device $DEV --out "$OUT" --json
export FT_WATCH=1 FT_LIMIT=150
finetune straight "$EQ_STEPS" "$EQ_MODEL" "$EQ_BATCH" $((EQ_STEPS / 2))
finetune resumed "$EQ_STEPS" "$EQ_MODEL" "$EQ_BATCH" $((EQ_STEPS / 2)) $((EQ_STEPS / 2))
if [ -d "$BEFORE/mixer_ft" ]; then  # the same run by 0.1.0's code: its package first on the path
  PYTHONPATH="$BEFORE" FT_PYFLAGS=-P finetune before "$EQ_STEPS" "$BEFORE_MODEL" "$EQ_BATCH" $((EQ_STEPS / 2))
else
  echo "no 0.1.0 code in $BEFORE: the before run is left out (see the top of this file)" | tee -a "$LOG"
fi
FT_EXTRA="--set compile=\"reduce-overhead\"" finetune graphs "$((EQ_STEPS / 2))" "$GRAPHS_MODEL" "$EQ_BATCH" "$EQ_STEPS"
unset FT_WATCH
run 60 "$PY" benchmarks/speed_report.py --records "$OUT" --runs "$RUNS" --out "$OUT"
# shellcheck disable=SC2086
run 150 "$PY" benchmarks/step_profile.py $L16 --variant "$PROFILED" --profile --out "$OUT"
# shellcheck disable=SC2086
[ -n "$GRAPHS" ] && run 120 "$PY" benchmarks/step_profile.py $L16 --variant "$GRAPHS" --out "$OUT"
ls -la "$OUT" | tee -a "$LOG"
rm -rf "$RUNS"
