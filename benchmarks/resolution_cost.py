"""What fine-tuning at a higher resolution costs per image: the same variant at 224 and at K x 224
(the tiled architecture that `--set architecture.img_size=448` builds from the 224 weights).

Run:  python benchmarks/resolution_cost.py [--model B/16] [--size 448] [--batch 8] [--device cpu]

Both are `mixer-ft finetune`'s training step on our fast path (token-major layout, fused SGD, and
torch.compile on CUDA) with the same batch and precision, their steps timed in alternation after
warm-up (`mixer_ft.report.bench.measure_pair`), so both see the same machine state. The figure is the
ratio of images/s; the paper's FLOP ratio is printed beside it. The record goes to results/bench/.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from mixer_ft.atomic import atomic_write_text
from mixer_ft.model.mixer import MixerConfig
from mixer_ft.model.resolution import resized_config
from mixer_ft.report.bench import device_slug, forward_flops, measure_pair, our_step
from mixer_ft.train.hardware import hardware
from mixer_ft.train.records import versions

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="B/16")
    ap.add_argument("--size", type=int, default=448)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--out", default=str(ROOT / "results" / "bench"))
    args = ap.parse_args()
    dev = torch.device(args.device)
    bf16 = dev.type == "cuda"
    base = MixerConfig.from_variant(args.model, num_classes=10)
    big = resized_config(base, args.size, "tile")
    torch.manual_seed(0)
    small_r, big_r = measure_pair(
        lambda: our_step(base, args.batch, dev, bf16),
        lambda: our_step(big, args.batch, dev, bf16),
        args.steps, 2, dev)
    record = {
        "benchmark": "resolution_cost", "model": args.model, "batch": args.batch, "precision": "bf16" if bf16 else "fp32",
        "device": hardware(dev, 1)["device"], "sizes": [base.img_size, big.img_size],
        "tokens_mlp_dim": [base.tokens_mlp_dim, big.tokens_mlp_dim],
        "images_per_s": [round(small_r["images_per_s"], 2), round(big_r["images_per_s"], 2)],
        "cost_per_image": round(small_r["images_per_s"] / big_r["images_per_s"], 2),
        "flop_ratio": round(forward_flops(big) / forward_flops(base), 2),
        "peak_memory_bytes": [small_r["peak_memory_bytes"], big_r["peak_memory_bytes"]],
        "timed_steps": args.steps, "versions": versions(), "date": time.strftime("%Y-%m-%d"),
    }
    path = Path(args.out) / f"resolution_cost_{device_slug(record['device'])}_{args.model.replace('/', '')}_{big.img_size}px.json"
    atomic_write_text(path, json.dumps(record, indent=2) + "\n")
    print(json.dumps({k: record[k] for k in ("model", "device", "sizes", "images_per_s", "cost_per_image",
                                              "flop_ratio")}))
    print(f"record: {path}")


if __name__ == "__main__":
    main()
