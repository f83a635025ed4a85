"""Make examples/photos/: a tiny image folder of two classes, drawn here, so that every command in the
README that takes "your photos" runs as written.

    python examples/make_photos.py

Two classes (`circle`, `square`), six photos each, landscape and portrait, JPEG: a plain
<class>/* folder, of which `mixer-ft` holds out a seeded 20% of each class as the test split.
"""

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

OUT = Path(__file__).resolve().parent / "photos"


def photo(kind: str, i: int) -> Image.Image:
    rng = np.random.default_rng([0 if kind == "circle" else 1, i])
    w, h = (64, 48) if i % 2 else (48, 64)
    img = Image.fromarray(rng.integers(90, 160, (h, w, 3), dtype=np.uint8))  # a noisy grey background
    draw = ImageDraw.Draw(img)
    x, y, r = int(rng.integers(14, w - 14)), int(rng.integers(14, h - 14)), int(rng.integers(7, 12))
    colour = tuple(int(c) for c in rng.integers(0, 256, 3))
    box = (x - r, y - r, x + r, y + r)
    draw.ellipse(box, fill=colour) if kind == "circle" else draw.rectangle(box, fill=colour)
    return img


def main() -> None:
    for kind in ("circle", "square"):
        (OUT / kind).mkdir(parents=True, exist_ok=True)
        for i in range(6):
            photo(kind, i).save(OUT / kind / f"{i}.jpg", quality=90)
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
