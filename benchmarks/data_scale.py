"""Data at scale: the decoded store, the compact (encoded) store, webdataset shards (cached, and streamed with no
cache) and timm's loader, in one run.

Run:  python benchmarks/data_scale.py [--images 20000] [--workers 1,2] [--out results/bench]

It makes a set of JPEGs (640x480, quality 90, smooth content with noise, 10 classes, a tenth of them as
test/) and the same images as webdataset shards, then measures each way of reading them, each in a fresh
process (so its peak RSS is its own) with a cache of its own, removed (and the disk's write-back done) before
the next way starts:
- cache bytes on disk (timm's loader and the stream have none: they read the files each epoch);
- seconds from the process start to the first training batch delivered (the cache built, or the loader's
  workers started), 224 px with the upstream crop (Inception crop, 5-100% of the area, and a flip);
- images/s delivered after that, at each number of workers (our decode threads, MIXER_FT_WORKERS, read
  through the training feed as a run reads them; the DataLoader's worker processes for timm): the median of
  3 windows of --batches batches of --batch, one after another, with their range;
- peak RSS (the process's, the loader's workers not counted).
The record goes to --out as data_scale_<cpu>.json.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import resource
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from mixer_ft.atomic import atomic_write_text, json_text  # noqa: E402
from mixer_ft.train.hardware import cpu_isa, cpu_name  # noqa: E402

WAYS = ("decoded", "encoded", "shards", "stream", "timm")


def _jpeg(args: tuple[int, int, Path]) -> tuple[str, int, bytes]:
    """One 640x480 JPEG: one of 64 smooth pictures, shifted, with noise (quality 90); (split, class, bytes)."""
    from PIL import Image

    i, classes, photos = args
    rng = np.random.default_rng(i)
    y, x = np.mgrid[0:480, 0:640]
    base = np.random.default_rng(i % 64).uniform(20, 120, 2)
    picture = 127 + 100 * np.sin(x[..., None] / base[0] + y[..., None] / base[1] + np.arange(3) * (1 + i % 64))
    picture = np.roll(picture, rng.integers(0, 640), axis=1) + rng.integers(-6, 7, (480, 640, 3))
    split, cls = ("test" if i % 10 == 9 else "train"), (i // 7) % classes
    path = photos / split / f"c{cls}" / f"{i:06d}.jpg"
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.clip(picture, 0, 255).astype(np.uint8)).save(path, quality=90)
    return split, cls, path.read_bytes()


def make_set(folder: Path, n: int, classes: int = 10) -> None:
    """n JPEGs at 640x480 under folder/photos/{train,test}/c<k>/, and the same as shards under folder/shards/."""
    import multiprocessing

    photos, shards = folder / "photos", folder / "shards"
    shards.mkdir(parents=True)
    samples: dict[str, list[tuple[int, bytes]]] = {"train": [], "test": []}
    with multiprocessing.get_context("fork").Pool(os.cpu_count()) as pool:
        for split, cls, data in pool.imap(_jpeg, [(i, classes, photos) for i in range(n)], chunksize=16):
            samples[split].append((cls, data))
    for split, items in samples.items():
        for s, start in enumerate(range(0, len(items), 1000)):
            with tarfile.open(shards / f"{split}-{s:05d}.tar", "w") as tar:
                for k, (cls, data) in enumerate(items[start:start + 1000], start):
                    for name, payload in ((f"{k:07d}.jpg", data), (f"{k:07d}.cls", str(cls).encode())):
                        info = tarfile.TarInfo(name)
                        info.size = len(payload)
                        tar.addfile(info, io.BytesIO(payload))
    (shards / "classes.txt").write_text("".join(f"c{k}\n" for k in range(classes)))


def du(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


REPEATS = 3  # timed windows of --batches batches each, one after another: the median is reported, with the range


def windows(take, first: int, batches: int, batch: int) -> dict:
    """Images/s over REPEATS windows of ``batches`` batches of ``batch``, ``take(step)`` taking each step's batch
    from ``first`` on: the median window and the slowest and fastest."""
    rates, step = [], first
    for _ in range(REPEATS):
        t = time.perf_counter()
        for _ in range(batches):
            take(step)
            step += 1
        rates.append(batches * batch / (time.perf_counter() - t))
    return {"median": round(float(np.median(rates)), 1), "min": round(min(rates), 1), "max": round(max(rates), 1)}


def measure(way: str, folder: Path, workers: list[int], batches: int, batch: int) -> dict:
    """In this (fresh) process: the numbers of one way of reading the set."""
    t0 = time.perf_counter()
    import torch

    cache = Path(os.environ["MIXER_FT_CACHE"])
    out: dict = {"way": way}
    if way == "timm":
        from timm.data import create_dataset, create_loader

        def loader(w: int):
            ds = create_dataset("", root=str(folder / "photos"), split="train", is_training=True)
            # The upstream augmentation only (Inception crop and flip): timm's default colour jitter is not upstream's
            return create_loader(ds, input_size=(3, 224, 224), batch_size=batch, is_training=True, num_workers=w,
                                 scale=(0.05, 1.0), hflip=0.5, color_jitter=0.0, interpolation="bilinear",
                                 mean=(0.5,) * 3, std=(0.5,) * 3, use_prefetcher=False, persistent_workers=False)

        it = iter(loader(workers[0]))
        next(it)
        out["first_batch_s"] = round(time.perf_counter() - t0, 2)
        out["cache_bytes"] = 0
        rates = {}
        for w in workers:
            it = iter(loader(w))
            next(it)  # the workers started
            rates[str(w)] = windows(lambda _, it=it: next(it), 1, batches, batch)
    else:
        from mixer_ft.data import cache as cache_mod
        from mixer_ft.data.preprocess import Preprocess
        from mixer_ft.train.feed import TrainFeed
        from mixer_ft.train.stream_feed import StreamFeed

        pre = Preprocess(224, mean=(0.5,) * 3, std=(0.5,) * 3)
        cpu, total = torch.device("cpu"), REPEATS * batches + 2
        if way == "stream":  # the shards read as a run reads them with --streaming: no cache, no index
            from mixer_ft.data.stream import shard_stream

            stream = shard_stream(str(folder / "shards"))

            def feed():
                return StreamFeed(stream, stream.train, pre, seed=0, local_batch=batch, total=total, device=cpu)
        else:
            if way == "decoded":
                os.environ["MIXER_FT_STORE"] = "decoded"  # every image decoded into the cache (0.1.0's store)
            data = cache_mod.load_data(str(folder / ("shards" if way == "shards" else "photos")))
            n = len(data.labels["train"])

            def feed():
                images = data.images["train"]
                if hasattr(images, "_pool"):
                    images._pool = None  # its decode threads made again, MIXER_FT_WORKERS of them
                return TrainFeed(data, np.arange(n), pre, seed=0, global_batch=batch, steps_per_epoch=n // batch,
                                 total=total, device=cpu)

        # As a training run reads its data: the feed (which reads the next step ahead where the store decodes
        # per batch), then the step's inputs made from what it took.
        os.environ["MIXER_FT_WORKERS"] = str(workers[0])
        first = feed()
        first.take(0).inputs(pre, slice(None))
        out["first_batch_s"] = round(time.perf_counter() - t0, 2)
        out["cache_bytes"] = du(cache)
        first.close()
        rates = {}
        for w in workers:
            os.environ["MIXER_FT_WORKERS"] = str(w)
            torch.set_num_threads(w)
            running = feed()
            running.take(0).inputs(pre, slice(None))  # the feed's threads started, as timm's workers are
            rates[str(w)] = windows(lambda step, f=running: f.take(step).inputs(pre, slice(None)), 1, batches, batch)
            running.close()
    out["images_per_s"] = {w: r["median"] for w, r in rates.items()}
    out["images_per_s_spread"] = {w: [r["min"], r["max"]] for w, r in rates.items()}
    out["peak_rss_bytes"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=20_000)
    parser.add_argument("--workers", default="1,2")
    parser.add_argument("--batches", type=int, default=8)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--out", type=Path, default=ROOT / "results" / "bench")
    parser.add_argument("--measure", choices=WAYS, help=argparse.SUPPRESS)  # one way, in a fresh process
    parser.add_argument("--folder", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    workers = [int(w) for w in args.workers.split(",")]
    if args.measure:
        print(json_text(measure(args.measure, args.folder, workers, args.batches, args.batch)))
        return
    with tempfile.TemporaryDirectory(prefix="mixer-ft-data-scale-") as tmp:
        folder = Path(tmp)
        t = time.perf_counter()
        make_set(folder, args.images)
        print(f"made {args.images} JPEGs and their shards in {time.perf_counter() - t:.0f} s", file=sys.stderr)
        results = {}
        for way in WAYS:
            env = {**os.environ, "MIXER_FT_CACHE": str(folder / f"cache-{way}"), "PYTHONPATH": str(ROOT)}
            done = subprocess.run([sys.executable, __file__, "--measure", way, "--folder", str(folder), "--workers",
                                   args.workers, "--batches", str(args.batches), "--batch", str(args.batch)],
                                  capture_output=True, text=True, env=env)
            if done.returncode:
                sys.exit(f"error: {way} failed:\n{done.stderr[-3000:]}")
            results[way] = json.loads(done.stdout.strip().splitlines()[-1])
            print(way, results[way], file=sys.stderr)
            # Its cache gone and the disk's write-back done before the next way starts: the decoded store's 12 GB
            # were still being written out while the next way built its cache, and slowed it
            shutil.rmtree(folder / f"cache-{way}", ignore_errors=True)
            os.sync()
    dec, enc = results["decoded"], results["encoded"]
    record = {
        "kind": "data_scale", "images": args.images, "image_size": [480, 640], "batch": args.batch, "workers": workers,
        "cpu": cpu_name(), "cpu_isa": cpu_isa(), "cores": os.cpu_count(), "date": time.strftime("%Y-%m-%d"),
        "results": results,
        "encoded_cache_share": round(enc["cache_bytes"] / dec["cache_bytes"], 4),
        "first_batch_speedup": round(dec["first_batch_s"] / enc["first_batch_s"], 2),
        "encoded_over_timm": {w: round(enc["images_per_s"][w] / results["timm"]["images_per_s"][w], 3)
                              for w in enc["images_per_s"]},
        "stream_over_timm": {w: round(results["stream"]["images_per_s"][w] / results["timm"]["images_per_s"][w], 3)
                             for w in enc["images_per_s"]},
    }
    args.out.mkdir(parents=True, exist_ok=True)
    slug = "cpu" if args.images == 20_000 else f"cpu_{args.images}"
    path = atomic_write_text(args.out / f"data_scale_{slug}.json", json_text(record, indent=2) + "\n")
    print(f"{path}: encoded cache {record['encoded_cache_share']:.1%} of the decoded store's; first batch "
          f"{record['first_batch_speedup']}x sooner; encoded over timm's loader {record['encoded_over_timm']}")


if __name__ == "__main__":
    main()
