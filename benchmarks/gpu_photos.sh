#!/usr/bin/env bash
# Photos on a GPU: does decoding each batch keep the fine-tune fed? The in21k recipe with B/16 (batch 256) on
# 20,000 generated 640x480 JPEGs (the compact store), decoded on the host and then on the GPU (decode =
# "device"), beside the bare training step, in one prepared call (each step stopped at its limit; at most 510 s).
#
# On a GPU machine, from the checkout (it makes its own data; nothing to copy):
#   bash benchmarks/gpu_photos.sh                 # the device tool: timeout_s about 540
# Here, on the CPU, tiny sizes, to check the commands (CI runs this):
#   GPU_CHECK_DRY=1 bash benchmarks/gpu_photos.sh
#
# 1. benchmarks/data_scale.py's set: 20,000 JPEGs at 640x480 in 10 classes, a tenth of them test.
# 2. `mixer-ft bench` of B/16 (batch 256): the bare compiled step, what the input must keep up with.
# 3. The fine-tune, each under benchmarks/cpu_watch.py: "photos_host" (PIL in the feed's decode threads,
#    the default) and "photos_device" (nvJPEG, --set decode=device).
# 4. benchmarks/photos_report.py: photos_<device>.json, each run's steady images/s over the bare step's.
# Every step ends with a line `rc=N`. Commit the record under results/bench/ with the GPU's name.
source "$(dirname "$0")/gpu_common.sh" /tmp/gpu-photos-out photos_log.txt
RUNS="$(mktemp -d "${TMPDIR:-/tmp}/gpu-photos-runs.XXXXXX")"
SET="$RUNS/set"
export MIXER_FT_CACHE="$RUNS/cache"  # the set's compact store: built by the first run, read by the second
if [ -n "${GPU_CHECK_DRY:-}" ]; then
  DEV=cpu; IMAGES=200; BENCH="--model S/32 --batch 8 --steps 2"
  STEPS=4; MODEL="$DRY_MODEL"; BATCH=8; EVAL=0; LOGE=2
else
  DEV=cuda; IMAGES=20000; BENCH="--model B/16 --batch 256"
  STEPS=300; MODEL="--model B/16"; BATCH=256; EVAL=0; LOGE=25
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>&1 | tee -a "$LOG"
fi
run 60 "$PY" -c "import sys; sys.path.insert(0, 'benchmarks'); from pathlib import Path; from data_scale import make_set; make_set(Path('$SET'), $IMAGES)"
# shellcheck disable=SC2086
run 120 "$PY" -m mixer_ft bench $BENCH --device $DEV --out "$OUT" --json
export FT_WATCH=1 FT_LIMIT=150
DATA="$SET/photos" finetune photos_host "$STEPS" "$MODEL" "$BATCH" 0
DATA="$SET/photos" FT_EXTRA="--set decode=device" finetune photos_device "$STEPS" "$MODEL" "$BATCH" 0
unset FT_WATCH
run 30 "$PY" benchmarks/photos_report.py --records "$OUT" --out "$OUT"
ls -la "$OUT" | tee -a "$LOG"
rm -rf "$RUNS"
