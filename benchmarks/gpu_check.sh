#!/usr/bin/env bash
# The GPU check: the project's CUDA path end to end in one prepared call, its records written to $OUT.
#
# On a GPU machine, from the checkout, with the data copied into .gpu/ (a folder git ignores):
#   mkdir -p .gpu && cp ../shared/data/cifar10-jpeg.tar.gz .gpu/
#   bash benchmarks/gpu_check.sh                  # about 8 minutes; the device tool: carry [".gpu"]
# Here, on the CPU, tiny sizes, to check the commands (CI runs this):
#   GPU_CHECK_DRY=1 GPU_CHECK_DATA=../shared/data/cifar10-jpeg.tar.gz bash benchmarks/gpu_check.sh
#
# 1. `mixer-ft bench` of B/16 and L/16 against timm (bf16, torch.compile, MFU, peak memory).
# 2. The in21k L/16 recipe for 40 steps from random weights (pretrained weights are not needed and
#    accuracy is not the point) on the real CIFAR-10 JPEGs: data, auto micro-batch, compile,
#    accumulation, the full 10,000-image test. Its images/s times 5.12M images (10,000 steps x 512)
#    is that table row's wall-clock on this GPU.
# 3. `mixer-ft fewshot` on that run's saved model (the model folder loads; features on the GPU).
# 4. benchmarks/resolution_cost.py: B/16's training step at 224 against 448 (tiled weights).
# 5. decode = "device": benchmarks/device_decode.py (4,000 generated 640x480 JPEGs: the train feed's images/s
#    decoded by nvJPEG against the host's decode threads, and how far apart the inputs are), then
#    tests/test_device_decode.py on the GPU (MIXER_FT_TEST_DEVICE=cuda) where pytest is installed.
# Every step ends with a line `rc=N`; a non-zero one is a bug to fix. Commit the records under
# results/bench/ and put the figures in the README's GPU row, with the GPU's name.
source "$(dirname "$0")/gpu_common.sh" /tmp/gpu-check-out log.txt
# The fine-tune's run folder (checkpoints, model): a fresh temporary folder, not $OUT (an L/16 model is
# 800 MB that need not come back) and not a fixed path another run could be using.
RUN_DIR="$(mktemp -d "${TMPDIR:-/tmp}/gpu-check-run.XXXXXX")"

if [ -n "${GPU_CHECK_DRY:-}" ]; then
  DEV=cpu; B16="--model S/32 --batch 4 --steps 2"; L16="--model S/32 --batch 4 --steps 2"; FT_STEPS=2; FT_BATCH=8
  FT_MODEL="$DRY_MODEL"   # a small final evaluation on the CPU
  RES="--model S/32 --batch 2 --steps 1 --device cpu"
  DD="--images 120 --batch 16 --batches 1 --device cpu"; DD_TESTS="-k orientation"  # the suite runs the rest here
else
  DEV=cuda; B16="--model B/16 --batch 256"; L16="--model L/16 --batch 128"; FT_STEPS=40; FT_BATCH=512
  FT_MODEL="--model L/16"
  RES="--model B/16 --batch 64 --steps 10"
  DD="--images 4000 --batch 256 --batches 6 --device cuda"; DD_TESTS=""
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>&1 | tee -a "$LOG"
fi
run 60 "$PY" -c "import sys, torch, timm, accelerate, safetensors, typer; print(sys.version.split()[0], 'torch', torch.__version__, 'timm', timm.__version__, 'accelerate', accelerate.__version__, 'cuda', torch.cuda.is_available())"
if [ ! -f "$DATA" ]; then
  echo "no data at $DATA: copy ../shared/data/cifar10-jpeg.tar.gz there (see the top of this file)" | tee -a "$LOG"
  echo "rc=1" | tee -a "$LOG"
fi

run 130 "$PY" -m mixer_ft bench $B16 --device $DEV --out "$OUT" --json
run 130 "$PY" -m mixer_ft bench $L16 --device $DEV --out "$OUT" --json
[ -f "$DATA" ] && run 300 "$PY" -m mixer_ft finetune --recipe recipes/in21k_l16_cifar10.toml --upstream none $FT_MODEL \
  --dataset "$DATA" --steps "$FT_STEPS" --batch "$FT_BATCH" --warmup 4 --eval-every 0 --output-dir "$RUN_DIR" \
  --fresh --set checkpoint_every=0 --set results_dir="\"$OUT\"" --set name=gpu_check_l16
[ -f "$DATA" ] && run 120 "$PY" -m mixer_ft fewshot --upstream "$RUN_DIR/model" --dataset "$DATA" \
  --shots 1,10 --seeds 2 --results "$OUT" --json
run 150 "$PY" benchmarks/resolution_cost.py $RES --out "$OUT"
run 150 "$PY" benchmarks/device_decode.py $DD --out "$OUT"
if "$PY" -c "import pytest, hypothesis" 2>/dev/null; then
  # shellcheck disable=SC2086
  run 150 env MIXER_FT_TEST_DEVICE=$DEV "$PY" -m pytest -q -p no:cacheprovider tests/test_device_decode.py $DD_TESTS
else
  echo "skipped: tests/test_device_decode.py needs pytest and hypothesis, not installed here" | tee -a "$LOG"
fi
ls -la "$OUT" | tee -a "$LOG"
rm -rf "$RUN_DIR"
