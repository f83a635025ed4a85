"""The host's share of one training step, piece by piece: what the CPU does while the device trains.

    python benchmarks/host_step.py --device cuda --model B/16 --batch 256 --out results/bench

On a GPU the host must queue step k+1 while the device runs step k, or the device waits. This times
each piece of host work a `mixer-ft finetune` step does, in milliseconds per step (median of
--repeats), the way the loop does it now beside the way 0.1.0 did it:

  boxes        the global batch's Inception crop boxes and flips (CPU generator, per (seed, step))
  gather       the batch's images: from the memory-mapped cache, or by index from the device copy
  transfer     the batch to the device: pageable memory (0.1.0), pinned memory, or none (on the device)
  preprocess   crop + resize + flip + scale on the device (the kernels' launch cost; and with the wait)
  optimizer    the bf16-momentum SGD update over the model's parameters: a loop of per-tensor
               kernels (0.1.0) against multi-tensor kernels (now); launch cost, and with the wait
  loss check   a read of the loss every step (0.1.0: the host waits for the device) against the
               device-side watch (now)
  log          the window's running sums: new small tensors every step (0.1.0) against in-place adds
  signal       the stop-signal check of one process

"issue" columns are the host's time to queue the work; "wait" columns include the device finishing
it. On the CPU, issue and wait are the same. The record (host_step_<device>.json) keeps every number.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mixer_ft.atomic import atomic_write_text  # noqa: E402
from mixer_ft.data.preprocess import Preprocess, batch_seed  # noqa: E402
from mixer_ft.model.mixer import MixerConfig, MlpMixer  # noqa: E402
from mixer_ft.report.bench import device_slug  # noqa: E402
from mixer_ft.train.bf16_momentum import BF16MomentumSGD  # noqa: E402
from mixer_ft.train.feed import copy_rows  # noqa: E402
from mixer_ft.train.hardware import hardware  # noqa: E402
from mixer_ft.train.records import versions  # noqa: E402
from mixer_ft.train.signals import StopSignals  # noqa: E402


def per_tensor_bf16_sgd(params: list[torch.nn.Parameter], bufs: list[torch.Tensor], lr: float, momentum: float) -> None:
    """0.1.0's update: six kernels a parameter, queued one parameter at a time from Python."""
    for p, b in zip(params, bufs):
        g = p.grad.float()
        trace = g + b.float() * momentum
        p.data.add_(trace, alpha=-lr)
        b.copy_(trace.to(torch.bfloat16))


def timed(fn: Callable[[], object], device: torch.device, repeats: int, wait: bool) -> float:
    """Median milliseconds of ``fn``; with ``wait``, until the device has finished it too."""
    sync = (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else (lambda: None)
    times = []
    for _ in range(repeats + 2):  # two untimed: first-call costs (allocations, kernel loads)
        sync()
        t0 = time.perf_counter()
        fn()
        if wait:
            sync()
        times.append(time.perf_counter() - t0)
    return round(1e3 * statistics.median(times[2:]), 3)


def both(fn: Callable[[], object], device: torch.device, repeats: int) -> dict[str, float]:
    return {"issue_ms": timed(fn, device, repeats, wait=False), "wait_ms": timed(fn, device, repeats, wait=True)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="B/16")
    ap.add_argument("--batch", type=int, default=256, help="images a step, one process")
    ap.add_argument("--images", type=int, default=50_000, help="train images in the (random, 32x32) cache")
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--out", default="results/bench")
    args = ap.parse_args()
    dev = torch.device(args.device)
    cuda = dev.type == "cuda"
    n, size = args.batch, 32
    rng = np.random.default_rng(0)
    folder = Path(args.out)
    folder.mkdir(parents=True, exist_ok=True)
    cache = folder / ".host_step_images.u8"  # a memory map like the data cache's
    images = np.lib.format.open_memmap(cache, mode="w+", dtype=np.uint8, shape=(args.images, size, size, 3))
    images[:] = rng.integers(0, 256, images.shape, dtype=np.uint8)
    images.flush()
    images = np.load(cache, mmap_mode="r")
    cfg = MixerConfig.from_variant(args.model, num_classes=10)
    pre = Preprocess.for_model(cfg)
    batch = np.sort(rng.choice(args.images, n, replace=False))
    gen = torch.Generator()
    out: dict[str, dict[str, float]] = {}

    def boxes() -> object:
        return pre.sample(n, size, size, gen.manual_seed(batch_seed(0, 0, 1)))

    out["boxes"] = {"issue_ms": timed(boxes, dev, args.repeats, wait=False)}
    out["gather, memory map"] = {"issue_ms": timed(lambda: np.ascontiguousarray(images[batch]), dev, args.repeats, False)}
    host = torch.from_numpy(np.ascontiguousarray(images[batch]))
    if cuda:
        on_device = copy_rows(images, dev)
        index = torch.from_numpy(batch)
        out["gather, on the device"] = both(lambda: on_device[index.pin_memory().to(dev, non_blocking=True)], dev,
                                            args.repeats)
        out["transfer, pageable"] = both(lambda: host.to(dev, non_blocking=True), dev, args.repeats)
        out["transfer, pinned"] = both(lambda: host.pin_memory().to(dev, non_blocking=True), dev, args.repeats)
    x = host.to(dev)
    box, flip = boxes()
    out["preprocess"] = both(lambda: pre.train(x, box, flip), dev, args.repeats)

    model = MlpMixer(cfg).to(dev)
    params = list(model.parameters())
    for p in params:
        p.grad = torch.randn_like(p) * 1e-3
    bufs = [torch.zeros_like(p, dtype=torch.bfloat16) for p in params]
    out["optimizer, per tensor (0.1.0)"] = both(lambda: per_tensor_bf16_sgd(params, bufs, 1e-3, 0.8984375), dev,
                                                args.repeats)
    opt = BF16MomentumSGD([{"params": params, "weight_decay": 0.0}], lr=1e-3, momentum=0.9)
    opt.step()  # the buffers exist from here on, as in every step after the first
    out["optimizer, multi-tensor"] = both(opt.step, dev, args.repeats)

    loss = torch.ones((), device=dev)
    out["loss check, read (0.1.0)"] = {"issue_ms": timed(lambda: bool(torch.isfinite(loss)), dev, args.repeats, False)}
    first, value = torch.full((), -1, dtype=torch.long, device=dev), torch.zeros((), device=dev)

    def watch() -> None:
        new = ~torch.isfinite(loss) & (first < 0)
        torch.where(new, 7, first), torch.where(new, loss, value)

    out["loss check, on the device"] = both(watch, dev, args.repeats)
    window, correct = torch.zeros(5, device=dev), torch.zeros((), device=dev, dtype=torch.long)

    def log_old() -> None:
        window.add_(torch.stack([loss, torch.ones((), device=dev), correct.float(), torch.tensor(float(n), device=dev),
                                 torch.tensor(float(n), device=dev)]))

    sums = torch.zeros(2, device=dev)

    def log_new() -> None:
        sums[0] += loss
        sums[1] += correct

    out["log, new tensors (0.1.0)"] = both(log_old, dev, args.repeats)
    out["log, in place"] = both(log_new, dev, args.repeats)

    class _OneProcess:  # what StopSignals.requested reads of an Accelerator
        num_processes, device = 1, dev

    with StopSignals() as signals:
        out["signal"] = {"issue_ms": timed(lambda: signals.requested(_OneProcess()), dev, args.repeats, False)}
    cache.unlink()

    record = {"kind": "host_step", "model": cfg.variant, "batch": n, "parameters": len(params),
              "device": hardware(dev, 1)["device"], "pieces": out, "repeats": args.repeats,
              "versions": versions(), "date": time.strftime("%Y-%m-%d")}
    path = folder / f"host_step_{device_slug(record['device'])}_{cfg.variant.replace('/', '')}_b{n}.json"
    atomic_write_text(path, json.dumps(record, indent=2) + "\n")
    width = max(len(k) for k in out)
    print(f"{'piece':<{width}}  issue ms  wait ms")
    for k, v in out.items():
        print(f"{k:<{width}}  {v['issue_ms']:8.3f}  {v.get('wait_ms', v['issue_ms']):7.3f}")
    print(f"record: {path}")


if __name__ == "__main__":
    main()
