"""First use of a folder of phone photos: building the data cache from 12-MP JPEGs, ours against PIL.

Run:  python benchmarks/photo_cache.py [--images 32] [--workers N]

Both sides turn each 4032x3024 JPEG into an upright RGB image whose longer side is 512 pixels,
with the same number of processes. Ours is `mixer_ft.data.cache.load_data` building its cache
(JPEG draft mode: the decoder's own reduced scale, then a bilinear resize; written to disk); the
peer is what a per-image pipeline does: PIL open, convert to RGB, resize (bilinear), in a
process pool. The photos are made here (smooth random content, quality 90), so no data set is
needed. The record goes to results/bench/.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import tempfile
import time
from pathlib import Path

import numpy as np

from mixer_ft.atomic import atomic_write_text
from mixer_ft.train.hardware import cpu_isa, cpu_name

ROOT = Path(__file__).resolve().parents[1]


def make_photos(folder: Path, n: int) -> list[Path]:
    from PIL import Image

    rng = np.random.default_rng(0)
    paths = []
    for i in range(n):
        cls = ("cat", "dog")[i % 2]
        split = "test" if i % 4 == 3 else "train"
        path = folder / split / cls / f"{i:04d}.jpg"
        path.parent.mkdir(parents=True, exist_ok=True)
        tiles = rng.integers(0, 255, (24, 32, 3), dtype=np.uint8)
        Image.fromarray(np.kron(tiles, np.ones((126, 126, 1), np.uint8))).save(path, quality=90)
        paths.append(path)
    return paths


def _pil(path: Path) -> tuple[int, int]:
    from PIL import Image

    with Image.open(path) as img:
        img = img.convert("RGB")
        w, h = img.size
        s = 512 / max(w, h)
        return np.asarray(img.resize((round(w * s), round(h * s)), Image.BILINEAR)).shape[:2]


def peer_rate(paths: list[Path], workers: int) -> float:
    t0 = time.perf_counter()
    with multiprocessing.get_context("fork").Pool(workers) as pool:
        shapes = pool.map(_pil, paths, chunksize=1)
    assert all(s == (384, 512) for s in shapes)
    return len(paths) / (time.perf_counter() - t0)


def ours_rate(folder: Path, n: int, workers: int) -> float:
    with tempfile.TemporaryDirectory() as cache:
        os.environ["MIXER_FT_CACHE"] = cache
        os.environ["MIXER_FT_WORKERS"] = str(workers)
        from mixer_ft.data.cache import load_data

        t0 = time.perf_counter()
        data = load_data(str(folder))
        took = time.perf_counter() - t0
    assert sum(len(v) for v in data.labels.values()) == n and data.image_size == (384, 512)
    return n / took


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=32)
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--out", default=str(ROOT / "results" / "bench"))
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "photos"
        paths = make_photos(folder, args.images)
        peer = peer_rate(paths, args.workers)
        ours = ours_rate(folder, args.images, args.workers)
    record = {"benchmark": "photo_cache", "images": args.images, "source": "4032x3024 JPEG, quality 90",
              "stored": "longer side 512", "workers": args.workers,
              "device": f"CPU ({cpu_name()}, {os.cpu_count()} cores, {cpu_isa()})",
              "ours_images_per_s": round(ours, 2), "pil_images_per_s": round(peer, 2), "ratio": round(ours / peer, 2),
              "date": time.strftime("%Y-%m-%d")}
    path = Path(args.out) / "photo_cache_cpu.json"
    atomic_write_text(path, json.dumps(record, indent=2) + "\n")
    print(json.dumps(record))
    print(f"record: {path}")


if __name__ == "__main__":
    main()
