"""The transfer experiment's data: CIFAR-10 split into disjoint upstream and downstream classes.

    python benchmarks/transfer/make_data.py [--archive ../shared/data/cifar10-jpeg.tar.gz] [--out runs/transfer/data]

Writes image folders (train/<class>/, test/<class>/) under --out:
  upstream/             the six animal classes, every train and test image (30,000 + 6,000)
  downstream/           the four vehicle classes, every train and test image (20,000 + 4,000): few-shot
  downstream_n{N}_s{S}/ N labelled train images per vehicle class, drawn by seed S, and all 4,000 test
A folder that exists already is kept as it is, so running it again costs nothing.
"""

from __future__ import annotations

import argparse
import random
import shutil
import sys
import tarfile
from pathlib import Path

UPSTREAM = ("bird", "cat", "deer", "dog", "frog", "horse")
DOWNSTREAM = ("airplane", "automobile", "ship", "truck")
SIZES = (10, 25, 100, 1000)
SEEDS = (0, 1, 2)


def unpack(archive: Path, into: Path) -> Path:
    """The archive's train/ and test/ folders under ``into``/cifar10 (unpacked once)."""
    root = into / "cifar10"
    if not (root / "test").is_dir():
        tmp = into / "cifar10.partial"
        shutil.rmtree(tmp, ignore_errors=True)
        try:
            with tarfile.open(archive) as tar:
                tar.extractall(tmp, filter="data")
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)  # nothing half-unpacked is left behind
            raise
        tmp.rename(root)
    return root


def link_tree(files: dict[str, list[Path]], split: str, out: Path) -> None:
    """Hard links (copies where links cannot be made) of each class's files under out/split/class/."""
    for cls, paths in files.items():
        (out / split / cls).mkdir(parents=True, exist_ok=True)
        for p in paths:
            dst = out / split / cls / p.name
            try:
                dst.hardlink_to(p)
            except OSError:
                shutil.copyfile(p, dst)


def make(out: Path, root: Path, classes: tuple[str, ...], train_per_class: int | None, seed: int) -> Path:
    """One image folder: ``train_per_class`` train images of each class drawn by ``seed`` (None: all)."""
    if out.is_dir():
        return out
    tmp = out.with_name(out.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    train = {}
    for cls in classes:
        paths = sorted((root / "train" / cls).glob("*.jpg"))
        random.Random(f"{seed}-{cls}").shuffle(paths)  # each seed its own draw, each class its own stream
        train[cls] = paths[:train_per_class] if train_per_class else paths
    link_tree(train, "train", tmp)
    link_tree({cls: sorted((root / "test" / cls).glob("*.jpg")) for cls in classes}, "test", tmp)
    tmp.rename(out)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--archive", default="../shared/data/cifar10-jpeg.tar.gz")
    ap.add_argument("--out", default="runs/transfer/data")
    ap.add_argument("--sizes", default=",".join(map(str, SIZES)), help="labelled images per class")
    ap.add_argument("--seeds", default=",".join(map(str, SEEDS)))
    args = ap.parse_args()
    if not Path(args.archive).is_file():
        print(f"error: no archive at {args.archive}; pass --archive (the CIFAR-10 JPEG archive, see "
              "../shared/data/README.md).", file=sys.stderr)
        sys.exit(2)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    try:
        root = unpack(Path(args.archive), out)
    except (tarfile.TarError, EOFError, OSError) as e:
        print(f"error: cannot unpack {args.archive} ({type(e).__name__}: {e}); fetch it again.", file=sys.stderr)
        sys.exit(2)
    if not all((root / "train" / c).is_dir() for c in UPSTREAM + DOWNSTREAM):
        print(f"error: {args.archive} lacks some of CIFAR-10's class folders under train/; fetch it again.",
              file=sys.stderr)
        sys.exit(2)
    print(make(out / "upstream", root, UPSTREAM, None, 0))
    print(make(out / "downstream", root, DOWNSTREAM, None, 0))
    for n in (int(v) for v in args.sizes.split(",")):
        for s in (int(v) for v in args.seeds.split(",")):
            print(make(out / f"downstream_n{n}_s{s}", root, DOWNSTREAM, n, s))


if __name__ == "__main__":
    main()
