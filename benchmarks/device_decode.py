"""Decoding on the device against decoding on the host: the compact store's training inputs, both ways, in one run.

Run:  python benchmarks/device_decode.py [--images 4000] [--batch 256] [--device cuda] [--out results/bench]
(benchmarks/gpu_check.sh runs it on a GPU; with --device cpu it checks the commands.)

It makes --images JPEGs at 640x480 (benchmarks/data_scale.py's set), caches them in the compact store and reads
the train split through the training feed as a run does (the next step prepared ahead), two ways:
- "host": PIL decodes in the feed's decode threads (MIXER_FT_WORKERS, default one per core), each image cropped
  where it was decoded, the inputs copied to the device;
- "device": the files' bytes go to the device, decoded there (nvJPEG on a GPU), then cropped (decode = "device").
For each: images/s delivered on the device at 224 px with the upstream crop (the median of 3 windows of --batches
batches, with their range). And how far apart the two ways' inputs are for the same boxes, in levels of 255
(Google's normalisation: 255 levels span 2): the mean over all pixels, and the worst image's mean.
The record goes to --out as device_decode_<device>.json.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from data_scale import REPEATS, make_set, windows  # noqa: E402

from mixer_ft.atomic import atomic_write_text, json_text  # noqa: E402
from mixer_ft.train.hardware import cpu_name  # noqa: E402


def agreement(images, pre, device, decoder, n: int) -> dict:
    """How far the device path's inputs are from the host path's, for the same n images and boxes."""
    import torch

    from mixer_ft.data.device_decode import device_crops

    index = np.arange(min(n, len(images)))
    own = torch.from_numpy(images.shapes[index])
    boxes, flips = pre.sample(len(index), own[:, 0], own[:, 1], torch.Generator().manual_seed(0))
    host, host_used = images.crops(index, boxes, flips, pre)
    dev, dev_used = device_crops(images, index, boxes, flips, pre, device, decoder)
    per_image = (dev.cpu() - host).abs().mean((1, 2, 3)) * 127.5
    return {"images": len(index), "same_images": bool(np.array_equal(host_used, dev_used)),
            "mean_levels": round(float(per_image.mean()), 4), "worst_image_levels": round(float(per_image.max()), 4)}


def rate(data, pre, device, decoder, batches: int, batch: int) -> dict:
    """Images/s of the train feed, the inputs on ``device`` (waited for there), one way."""
    import torch

    from mixer_ft.train.feed import TrainFeed

    n = len(data.labels["train"])
    feed = TrainFeed(data, np.arange(n), pre, seed=0, global_batch=batch, steps_per_epoch=n // batch,
                     total=REPEATS * batches + 2, device=device, decoder=decoder)

    def take(step: int) -> None:
        feed.take(step).inputs(pre, slice(None))
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    try:
        take(0)  # threads started, the decoder's first call made
        return windows(take, 1, batches, batch)
    finally:
        feed.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=4000)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--batches", type=int, default=6)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--out", type=Path, default=ROOT / "results" / "bench")
    args = parser.parse_args()
    import torch

    from mixer_ft.data.cache import load_data
    from mixer_ft.data.device_decode import jpeg_decoder
    from mixer_ft.data.preprocess import Preprocess

    device = torch.device(args.device)
    decoder = jpeg_decoder()
    with tempfile.TemporaryDirectory(prefix="mixer-ft-device-decode-") as tmp:
        os.environ["MIXER_FT_CACHE"] = str(Path(tmp) / "cache")
        t = time.perf_counter()
        make_set(Path(tmp), args.images)
        data = load_data(str(Path(tmp) / "photos"))
        print(f"made and indexed {args.images} JPEGs in {time.perf_counter() - t:.0f} s", file=sys.stderr)
        pre = Preprocess(224, mean=(0.5,) * 3, std=(0.5,) * 3)
        record = {"kind": "device_decode", "device": torch.cuda.get_device_name(device) if device.type == "cuda"
                  else cpu_name(), "decoder": decoder.name, "images": args.images, "image_size": [480, 640],
                  "batch": args.batch, "host_threads": int(os.environ.get("MIXER_FT_WORKERS") or os.cpu_count() or 1),
                  "torch": torch.__version__, "date": time.strftime("%Y-%m-%d"),
                  "agreement": agreement(data.images["train"], pre, device, decoder, args.batch)}
        print("agreement", record["agreement"], file=sys.stderr)
        for way, dec in (("host", None), ("device", decoder)):
            record[f"{way}_images_per_s"] = rate(data, pre, device, dec, args.batches, args.batch)
            print(way, record[f"{way}_images_per_s"], file=sys.stderr)
    record["device_over_host"] = round(record["device_images_per_s"]["median"] / record["host_images_per_s"]["median"], 3)
    slug = "cpu" if device.type == "cpu" else record["device"].lower().replace("nvidia ", "").replace(" ", "-")
    args.out.mkdir(parents=True, exist_ok=True)
    path = atomic_write_text(args.out / f"device_decode_{slug}.json", json_text(record, indent=2) + "\n")
    print(f"{path}: device {record['device_over_host']}x the host's images/s; inputs "
          f"{record['agreement']['mean_levels']} levels apart on average")


if __name__ == "__main__":
    main()
