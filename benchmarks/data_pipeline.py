"""Images/s delivered at the model's input size: our batched device pipeline against per-image PIL.

Run:  python benchmarks/data_pipeline.py [--data ../shared/data/cifar10-jpeg.tar.gz] [--device cpu]

Both sides do the same work per training image: Inception crop (area 5%-100%, aspect 3/4-4/3),
bilinear resize to 224, random horizontal flip, scaling to [-1, 1], batches of 256. Ours reads
uint8 images decoded once into the memory-mapped cache; the peers are torchvision's per-image
PIL transforms, (a) decoding the JPEG each time as an ImageFolder does, (b) on images already
decoded, (c) as (a) in a DataLoader with one worker per core. Figures go to results/bench/.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import resource
import statistics
import sys
import tarfile
import time
from pathlib import Path

import torch

from mixer_ft.atomic import atomic_write_text
from mixer_ft.data.cache import load_data
from mixer_ft.data.preprocess import Preprocess, iterate_batches
from mixer_ft.train.hardware import cpu_name

ROOT = Path(__file__).resolve().parents[1]
SIZE, BATCH = 224, 256


def peer_transform():
    from torchvision import transforms as T

    return T.Compose([
        T.RandomResizedCrop(SIZE, scale=(0.05, 1.0), ratio=(3 / 4, 4 / 3), interpolation=T.InterpolationMode.BILINEAR),
        T.RandomHorizontalFlip(), T.ToTensor(), T.Normalize((0.5,) * 3, (0.5,) * 3),
    ])


class JpegSet(torch.utils.data.Dataset):
    def __init__(self, blobs, labels, decoded=None):
        self.blobs, self.labels, self.decoded, self.tf = blobs, labels, decoded, peer_transform()

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        from PIL import Image

        img = self.decoded[i] if self.decoded is not None else Image.open(io.BytesIO(self.blobs[i])).convert("RGB")
        return self.tf(img), self.labels[i]


def rate(batches, n_batches: int, sync) -> float:
    """Median images/s over timed batches, after one warm-up batch."""
    it = iter(batches)
    next(it)
    times = []
    for _ in range(n_batches):
        t = time.perf_counter()
        x = next(it)
        sync(x)
        times.append(time.perf_counter() - t)
    return BATCH / statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "cifar10-jpeg.tar.gz"))
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--batches", type=int, default=10)
    ap.add_argument("--out", default=str(ROOT / "results" / "bench"))
    args = ap.parse_args()
    device = torch.device(args.device)
    sync = (lambda x: torch.cuda.synchronize()) if device.type == "cuda" else (lambda x: None)

    data = load_data(args.data)
    train = data.splits()["train"][1]
    pre = Preprocess(SIZE)

    def ours():
        for b, x, _ in iterate_batches(data.images["train"], data.labels["train"], train, BATCH, shuffle=True):
            boxes, flip = pre.sample(len(x), *x.shape[1:3], torch.Generator().manual_seed(b))
            yield pre.train(x.to(device, non_blocking=True), boxes, flip)

    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    ours_rate = rate(ours(), args.batches, sync)
    rss_ours = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss0

    # The peers read the same images as JPEG bytes (what an ImageFolder decodes every epoch).
    n = BATCH * (args.batches + 2)
    blobs, labels = [], []
    with tarfile.open(args.data) as tar:
        for m in tar:
            if m.isfile() and "/train/" in f"/{m.name}" and len(blobs) < n:
                blobs.append(tar.extractfile(m).read())
                labels.append(0)
    from PIL import Image

    decoded = [Image.open(io.BytesIO(b)).convert("RGB") for b in blobs]
    for im in decoded:
        im.load()
    peers = {}
    for name, ds, workers in (("pil_decode_each_time", JpegSet(blobs, labels), 0),
                              ("pil_predecoded", JpegSet(blobs, labels, decoded), 0),
                              (f"pil_decode_{os.cpu_count()}_workers", JpegSet(blobs, labels), os.cpu_count())):
        loader = torch.utils.data.DataLoader(ds, batch_size=BATCH, shuffle=True, num_workers=workers)
        peers[name] = rate((x.to(device) for x, _ in loader), args.batches, sync)

    best_peer = max(peers.values())
    record = {
        "benchmark": "data_pipeline", "size": SIZE, "batch": BATCH, "timed_batches": args.batches,
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({cpu_name()}, {os.cpu_count()} cores)",
        "torch_threads": torch.get_num_threads(),
        "ours_images_per_s": round(ours_rate, 1),
        **{f"{k}_images_per_s": round(v, 1) for k, v in peers.items()},
        "ratio_vs_best_peer": round(ours_rate / best_peer, 2),
        "ours_peak_rss_growth_mib": round(rss_ours / 1024, 1),
        "versions": {"python": sys.version.split()[0], "torch": torch.__version__},
        "date": time.strftime("%Y-%m-%d"),
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    dest = out / f"data_pipeline_{device.type}.json"
    atomic_write_text(dest, json.dumps(record, indent=2) + "\n")
    print(json.dumps(record, indent=2))
    print(f"ours {ours_rate:,.0f} img/s; " + "; ".join(f"{k} {v:,.0f} img/s" for k, v in peers.items())
          + f"; ratio vs best peer {ours_rate / best_peer:.2f}x -> {dest}")


if __name__ == "__main__":
    main()
