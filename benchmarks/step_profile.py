"""Where a training step's time goes, and what one compile setting buys, against timm in the same run.

    python benchmarks/step_profile.py --model L/16 --batch 128 --variant compile --profile --out $OUT
    python benchmarks/step_profile.py --model L/16 --batch 128 --variant reduce-overhead --out $OUT

A variant is our fast path (token-major layout, fused SGD) built one way:
  eager                        no torch.compile
  compile                      torch.compile's default mode (what `mixer-ft finetune` runs on CUDA)
  reduce-overhead              CUDA graphs: the step's kernels launched as one graph
  max-autotune-no-cudagraphs   inductor's GEMM and kernel autotuning
  max-autotune                 both
Its step and timm's eager step are timed in alternation (`mixer_ft.bench.measure_pair`); the record
has both rates, their ratio and MFU (bf16 on a GPU with a known peak). ``--profile`` adds a torch
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
from mixer_ft.bench import TrainStep, _peak, _timm_model, device_slug, forward_flops, measure_pair
from mixer_ft.model import MixerConfig, MlpMixer, canonical_variant
from mixer_ft.records import hardware, versions

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


def build(variant: str, cfg: MixerConfig, batch: int, dev: torch.device, bf16: bool) -> TrainStep:
    """Our step as the variant builds it."""
    compiled = variant != "eager"
    mode = None if variant in ("eager", "compile") else variant
    return TrainStep(MlpMixer(cfg).set_fast_path(True), batch, cfg.img_size, dev, bf16,
                     compile_model=compiled, fused=True, compile_mode=mode)


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
    dev, variant = torch.device(args.device), canonical_variant(args.model)
    bf16 = dev.type == "cuda"
    cfg = MixerConfig.from_variant(variant, num_classes=1000, gelu="exact", img_size=args.img_size)
    torch.manual_seed(0)
    t0 = time.perf_counter()
    ours, theirs = measure_pair(lambda: build(args.variant, cfg, args.batch, dev, bf16),
                                lambda: TrainStep(_timm_model(variant, cfg), args.batch, args.img_size, dev, bf16),
                                args.steps, args.warmup, dev, desc=f"{variant} {args.variant} against timm")
    peak, flops = _peak(dev), 3 * forward_flops(cfg)
    record = {"model": variant, "batch": args.batch, "img_size": args.img_size, "variant": args.variant,
              "precision": "bf16" if bf16 else "fp32", "device": hardware(dev, 1)["device"],
              "ours_images_per_s": round(ours["images_per_s"], 2), "timm_images_per_s": round(theirs["images_per_s"], 2),
              "ratio": round(ours["images_per_s"] / theirs["images_per_s"], 3),
              "mfu": round(ours["images_per_s"] * flops / peak, 4) if peak and bf16 else None,
              "peak_memory_bytes": ours["peak_memory_bytes"], "timed_steps": args.steps}
    if args.profile:
        step = build(args.variant, cfg, args.batch, dev, bf16)
        for _ in range(args.warmup):
            step()
        record["profile"] = profile(step, args.steps)
    record |= {"seconds": round(time.perf_counter() - t0, 1), "versions": versions(), "date": time.strftime("%Y-%m-%d")}
    name = (f"step_profile_{device_slug(record['device'])}_{variant.replace('/', '')}"
            f"{'' if args.img_size == 224 else f'_{args.img_size}px'}_b{args.batch}_{args.variant}.json")
    path = Path(args.out) / name
    atomic_write_text(path, json.dumps(record, indent=2) + "\n")
    print(json.dumps({k: record[k] for k in ("model", "variant", "ours_images_per_s", "timm_images_per_s", "ratio",
                                             "mfu")} | ({"profile": record["profile"]} if args.profile else {})))
    print(f"record: {path}")


if __name__ == "__main__":
    main()
