"""Where a training step's time goes, and what one compile setting buys, against timm in the same run.

    python benchmarks/step_profile.py --model L/16 --batch 128 --variant compile --profile --out $OUT
    python benchmarks/step_profile.py --model L/16 --batch 128 --variant reduce-overhead --out $OUT

A variant is our fast path (token-major layout, fused SGD) built one way:
  eager                        no torch.compile
  compile                      torch.compile's default mode (what `mixer-ft finetune` runs on CUDA)
  reduce-overhead              CUDA graphs: the step's kernels launched as one graph
  max-autotune-no-cudagraphs   inductor's GEMM and kernel autotuning
  max-autotune                 both
Its step and timm's eager step are timed in alternation by `mixer_ft.report.bench.run_bench` (the
`mixer-ft bench` record: both rates, their ratio and MFU, bf16 on a GPU with a known peak). ``--profile`` adds a torch
profiler trace of the variant's step summed by kernel family: matrix products, elementwise kernels
(GELU, residual adds, bias, fused Triton kernels), normalisation and reductions, the optimizer,
memory copies, and the time the device sat idle between kernels (launch gaps: wall time minus
busy time). On the CPU the same families are summed over aten operators (the dry run's check).
Each call writes ``step_profile_<device>_<model>_b<batch>_<variant>.json`` to --out.
"""

from __future__ import annotations

import argparse
import json
import re
import time
from pathlib import Path

import torch

from mixer_ft.atomic import atomic_write_text
from mixer_ft.report.bench import TrainStep, bench_config, device_slug, our_step, run_bench

VARIANTS = ("eager", "compile", "reduce-overhead", "max-autotune-no-cudagraphs", "max-autotune")
# Kernel (CUDA) or operator (CPU) name -> family; the first pattern that matches wins.
FAMILIES = (
    ("optimizer", r"multi_tensor|fused_sgd|_foreach|sgd|momentum"),
    ("matmul", r"gemm|matmul|cutlass|xmma|cublas|nvjet|sm\d\d_|aten::(mm|addmm|bmm|linear|_convolution|convolution)\b"),
    ("normalisation", r"layer_norm|layernorm|triton_\w*red|triton_per|reduce|aten::(sum|mean|native_layer_norm)\b"),
    ("memory", r"memcpy|memset|copy_|aten::(copy_|to|contiguous|clone)\b"),
    ("elementwise", r"triton_poi|elementwise|vectorized|gelu|aten::(add|mul|gelu|add_|div|sub)"),
)


def family(name: str) -> str:
    """A kernel's or operator's family (see FAMILIES), else "other"."""
    low = name.lower()
    return next((fam for fam, pattern in FAMILIES if re.search(pattern, low)), "other")


def profile(step: TrainStep, steps: int) -> dict[str, float]:
    """Milliseconds per step by family, the step's wall time and the device's idle share."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    cuda = step.device.type == "cuda"
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with torch_profile(activities=activities) as prof:
        wall = sum(step() for _ in range(steps))
    by = dict.fromkeys([f for f, _ in FAMILIES] + ["other"], 0.0)
    for e in prof.key_averages():
        if cuda:  # kernels carry the device time; their own time, so nothing counts twice
            us = getattr(e, "self_device_time_total", 0) or getattr(e, "self_cuda_time_total", 0)
        else:  # aten operators only: python and profiler frames are not work
            us = e.self_cpu_time_total if e.key.startswith("aten::") else 0
        by[family(e.key)] += us / 1e3 / steps
    busy = sum(by.values())
    wall_ms = 1e3 * wall / steps
    out = {f"{k}_ms": round(v, 3) for k, v in by.items()}
    out |= {"busy_ms": round(busy, 3), "step_ms": round(wall_ms, 3),
            "idle_share": round(max(0.0, 1 - busy / wall_ms), 4) if cuda else None,
            "matmul_share": round(by["matmul"] / busy, 4) if busy else None}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="B/16")
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--img-size", type=int, default=224)
    ap.add_argument("--variant", choices=VARIANTS, default="compile")
    ap.add_argument("--steps", type=int, default=20, help="timed steps of each (and profiled steps)")
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--profile", action="store_true")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--out", default="results/bench")
    args = ap.parse_args()
    mode = "default" if args.variant == "compile" else args.variant  # torch.compile's name for its default
    t0 = time.perf_counter()
    record = run_bench(args.model, args.batch, args.device, args.img_size, steps=args.steps, warmup=args.warmup,
                       compile_mode=mode) | {"variant": args.variant}
    if args.profile:
        dev = torch.device(args.device)
        step = our_step(bench_config(record["model"], args.img_size), args.batch, dev, record["precision"] == "bf16",
                        compile_mode=mode)
        for _ in range(args.warmup):
            step()
        record["profile"] = profile(step, args.steps)
    record["seconds"] = round(time.perf_counter() - t0, 1)
    name = (f"step_profile_{device_slug(record['device'])}_{record['model'].replace('/', '')}"
            f"{'' if args.img_size == 224 else f'_{args.img_size}px'}_b{args.batch}_{args.variant}.json")
    path = Path(args.out) / name
    atomic_write_text(path, json.dumps(record, indent=2) + "\n")
    print(json.dumps({k: record[k] for k in ("model", "variant", "ours_images_per_s", "timm_images_per_s", "ratio",
                                             "mfu")} | ({"profile": record["profile"]} if args.profile else {})))
    print(f"record: {path}")

if __name__ == "__main__":
    main()
