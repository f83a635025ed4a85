"""Using a model: :class:`Classifier`, which labels images from any model source, and ``mixer-ft predict``.

Test-time views and the scoring of a labelled split live in :mod:`mixer_ft.train.evaluation`, which training
and ``mixer-ft evaluate`` share: a saved model scored on its run's data and split gives exactly the accuracy
its run record holds.
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mixer_ft.atomic import json_text
from mixer_ft.bounded import read_file
from mixer_ft.data.class_names import check_class_names
from mixer_ft.data.images import MAX_FILE_BYTES, printable, to_rgb_array
from mixer_ft.data.preprocess import Preprocess
from mixer_ft.errors import ConfigError, DataError, SourceError
from mixer_ft.model.config import MAX_SIDE
from mixer_ft.model.mixer import MlpMixer
from mixer_ft.text import one_line
from mixer_ft.train.evaluation import check_shift, num_views, view_logits

_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def imagenet_names(num_classes: int) -> list[str] | None:
    """timm's ImageNet class descriptions for a 1,000- or 21,843-class head (Google's heads), else None."""
    subsets = {1000: "imagenet-1k", 21843: "imagenet-21k-goog"}
    if num_classes not in subsets:
        return None
    from timm.data import ImageNetInfo

    info = ImageNetInfo(subsets[num_classes])
    return [info.index_to_description(i) for i in range(num_classes)]


def _default_precision(recorded: str | None, device: torch.device) -> str:
    """bf16 on a GPU that has it; on a CPU, what the model was scored with if the CPU computes it natively."""
    from mixer_ft.train.hardware import native_bf16

    return "bf16" if native_bf16(device) and (device.type == "cuda" or recorded == "bf16") else "no"


class Classifier:
    """A model ready to label images: weights, preprocessing, class names and test-time views.

    Called on one image (a path, a PIL image or an RGB uint8 array) it returns that image's
    top-k ``[{"label", "index", "score"}, ...]``; on a list, one such list per image, as
    ``transformers.pipeline("image-classification")`` does.
    """

    def __init__(self, model: MlpMixer, classes: list[str], *, mirror: bool = False, shift: int = 0,
                 precision: str = "no", device: str | torch.device = "cpu") -> None:
        check_shift(shift, model.config.img_size)
        self.device = torch.device(device)
        self.model = model.to(self.device).eval()
        self.pre = Preprocess.for_model(model.config)
        self.classes, self.mirror, self.shift, self.precision = classes, mirror, shift, precision
        self.provenance: dict[str, Any] = {}  # how the model was made, where its folder says
        self.recorded_views: dict[str, Any] = {}  # the test-time views its training scored with
        self.named = True  # whether the model names its classes (bare weights do not: they are numbered here)

    @classmethod
    def from_pretrained(cls, source: str | Path, *, variant: str | None = None, device: str | None = None,
                        mirror: bool | None = None, shift: int | None = None,
                        precision: str | None = None, img_size: int | None = None,
                        resize: str = "tile") -> Classifier:
        """Load any model source: a model folder, a run folder or any weight source of ``--upstream``.

        The image alone is scored unless ``mirror`` or ``shift`` add test-time views: what timm and
        transformers compute from the same folder, and the accuracy its card and run record give. The
        precision is the one the model was scored with unless given; ``img_size`` and ``resize`` as
        :func:`mixer_ft.weights.loading.create_model` takes them. ``recorded_views`` says which views the
        model's training scored besides.
        """
        from mixer_ft.weights.loading import load_checkpoint, model_from_checkpoint

        ckpt = load_checkpoint(str(source), variant=variant)
        model = model_from_checkpoint(ckpt, variant, resize=resize, **({"img_size": img_size} if img_size else {}))
        n = model.config.num_classes
        if ckpt.classes is not None:  # a model folder's own list: the rules of every class list
            check_class_names(ckpt.classes, f"the class names of {source}")
        classes = ckpt.classes or imagenet_names(n) or [str(i) for i in range(n)]
        from mixer_ft.train.devices import resolve_device

        dev = resolve_device(device)
        views = ckpt.evaluation
        clf = cls(model, classes, device=dev, mirror=bool(mirror), shift=shift or 0,
                  precision=precision or _default_precision(views.get("precision"), dev))
        clf.provenance, clf.recorded_views = ckpt.provenance, views
        clf.named = ckpt.classes is not None or imagenet_names(n) is not None
        return clf

    def views_note(self) -> str | None:
        """Which views score the images, where the model's training also used others (None: nothing to say)."""
        trained = [f for f, on in (("--flip", self.recorded_views.get("flip")),
                                   (f"--translate {self.recorded_views.get('translate')}", self.recorded_views.get("translate")))
                   if on]
        if not trained or self.mirror or self.shift:
            return None
        return (f"views: the image alone, as timm and transformers score it; this model's run also scored test-time "
                f"views ({' '.join(trained)} adds them)")

    @contextlib.contextmanager
    def scoring(self) -> Iterator[None]:
        """No gradients, and autocast in the classifier's precision."""
        dtype = _DTYPES.get(self.precision)
        with torch.no_grad(), torch.autocast(self.device.type, dtype=dtype, enabled=dtype is not None):
            yield

    def probabilities(self, arrays: list[np.ndarray]) -> torch.Tensor:
        """(N, classes) softmax of the mean logits over the views, for RGB uint8 arrays of any sizes."""
        batches, start = [], 0
        while start < len(arrays):  # runs of one shape are resized together, as evaluation does
            end = start + 1
            while end < len(arrays) and arrays[end].shape == arrays[start].shape:
                end += 1
            batches.append(self.pre.eval(torch.from_numpy(np.stack(arrays[start:end])).to(self.device)))
            start = end
        with self.scoring():
            logits = view_logits(self.model, torch.cat(batches), self.mirror, self.shift)
        return torch.softmax(logits / num_views(self.mirror, self.shift), dim=1).cpu()

    def top_k(self, probs: torch.Tensor, k: int) -> list[dict[str, Any]]:
        values, indices = probs.topk(min(k, len(self.classes)))
        return [{"label": self.classes[i], "index": int(i), "score": float(v)} for v, i in zip(values, indices)]

    def __call__(self, images: Any, top_k: int = 5) -> list[dict[str, Any]] | list[list[dict[str, Any]]]:
        single = not isinstance(images, (list, tuple))
        arrays = [as_rgb_array(x) for x in ([images] if single else images)]
        results = [self.top_k(p, top_k) for p in self.probabilities(arrays)]
        return results[0] if single else results


def as_rgb_array(image: Any) -> np.ndarray:
    """A path, PIL image or array as an upright RGB uint8 array (H, W, 3)."""
    from PIL import Image

    if isinstance(image, (str, Path)):
        return to_rgb_array((str(image), lambda: read_file(image, printable(str(image)), MAX_FILE_BYTES)),
                            max_side=MAX_SIDE)
    if isinstance(image, Image.Image):
        return to_rgb_array(("image", lambda: image), max_side=MAX_SIDE)
    if isinstance(image, np.ndarray) and image.dtype == np.uint8 and image.ndim in (2, 3):
        if image.ndim == 2:
            return np.repeat(image[..., None], 3, axis=2)
        if image.shape[2] in (3, 4):
            return np.ascontiguousarray(image[..., :3])
    raise ConfigError(f"Cannot classify {type(image).__name__} {getattr(image, 'shape', '')}: give a path, a PIL "
                      "image, or a uint8 array (H, W), (H, W, 3) or (H, W, 4).")


def collect_images(inputs: list[str]) -> list[Path]:
    """Image files named by ``inputs``: files, folders (searched recursively) and globs, in order.

    Raises:
        ConfigError: an input that matches nothing, or a folder or glob with no images in it.
    """
    import glob

    from mixer_ft.data.folder import image_suffixes, is_litter, walk
    from mixer_ft.gate import check_path, no_such

    def images_in(paths: list[Path]) -> list[Path]:
        return sorted(p for p in paths if p.is_file() and p.suffix.lower() in image_suffixes() and not is_litter(p.name))

    found: list[Path] = []
    for text in inputs:
        path = check_path(Path(text).expanduser(), "image")  # the gate: a FIFO or device is one line
        if path.is_file():
            found.append(path)
            continue
        if path.is_dir():  # the data folders' rules: OS litter skipped, links followed inside, named outside
            files = images_in(list(walk(path).values()))
        elif glob.has_magic(text):
            files = images_in([Path(p) for p in glob.glob(str(path), recursive=True)])
        else:
            raise ConfigError(no_such(text, "image file or folder"))
        if not files:
            raise ConfigError(f"{text} holds no images ({', '.join(sorted(image_suffixes()))}).")
        found += files
    return found


def label_files(clf: Classifier, files: list[Path], *, top_k: int = 1,
                batch: int = 64) -> Iterator[tuple[Path, list[dict[str, Any]] | str]]:
    """(file, its top-k) for each file, decoded and scored ``batch`` at a time; a file that cannot be
    read gives (file, why) instead, and the others are still labelled."""
    from PIL import Image, UnidentifiedImageError

    for start in range(0, len(files), batch):
        decoded: list[tuple[Path, np.ndarray | str]] = []
        for f in files[start:start + batch]:
            try:
                if f.stat().st_size > MAX_FILE_BYTES:
                    raise OSError(f"{f.stat().st_size:,} bytes, more than an image file may have")
                decoded.append((f, to_rgb_array((str(f), lambda f=f: read_file(f, printable(str(f)), MAX_FILE_BYTES)),
                                                max_side=MAX_SIDE)))
            except UnidentifiedImageError:
                decoded.append((f, "empty file" if f.stat().st_size == 0 else "not an image PIL can read"))
            except Image.DecompressionBombError as e:
                decoded.append((f, f"too large: {e}"))
            except (OSError, ValueError, SyntaxError) as e:  # truncated or damaged image data
                decoded.append((f, f"{type(e).__name__}: {e}"))
            except SourceError as e:  # not a regular file, or cut short as it was read
                decoded.append((f, e.why))
        good = [(f, a) for f, a in decoded if isinstance(a, np.ndarray)]
        probs = iter(clf.probabilities([a for _, a in good])) if good else iter(())
        for f, a in decoded:
            yield f, (clf.top_k(next(probs), top_k) if isinstance(a, np.ndarray) else a)


def format_prediction(fmt: str, path: str, top: list[dict], header: bool, width: int = 0) -> str:
    """One image's top-k as ``mixer-ft predict`` prints it: a table row, a JSON line or CSV rows (one per rank)."""
    if fmt == "json":
        first = top[0]
        return json_text({"path": path, "label": first["label"], "index": first["index"], "score": first["score"],
                           "top_k": [{"label": t["label"], "index": t["index"], "score": t["score"]} for t in top]}) + "\n"
    if fmt == "csv":
        import csv

        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        if header:
            writer.writerow(["path", "rank", "label", "index", "score"])
        writer.writerows([one_line(path), r + 1, one_line(t["label"]), t["index"], f"{t['score']:.6f}"]
                         for r, t in enumerate(top))
        return buf.getvalue()
    return f"{one_line(path):<{width}}  " + ", ".join(f"{one_line(t['label'])} {100 * t['score']:5.1f}%" for t in top) + "\n"


def write_labels(clf: Classifier, files: list[Path], fmt: str, top_k: int, batch: int, say: Callable[..., Any]) -> None:
    """``mixer-ft predict``'s output: each readable file's top-k labels said in ``fmt`` (table, json or csv) as it is
    labelled (a progress bar on stderr for more than a batch), then one warning naming the files that are not images.

    Raises:
        DataError: none of the files is a readable image.
    """
    import sys

    from tqdm.auto import tqdm

    width = min(max((len(printable(str(f))) for f in files), default=0), 100)  # the table's path column
    bad: list[str] = []
    with tqdm(total=len(files), unit="img", disable=len(files) <= batch or None, file=sys.stderr) as bar:
        for i, (path, result) in enumerate(label_files(clf, files, top_k=top_k, batch=batch)):
            if isinstance(result, str):
                bad.append(f"{printable(str(path))} ({result})")
            else:  # JSON keeps a file name's undecodable bytes exactly (as \udcXX escapes); text and CSV print them
                say(format_prediction(fmt, str(path) if fmt == "json" else printable(str(path)), result,
                                      header=i == 0, width=width), nl=False)
            bar.update(1)
    if bad:
        say(f"warning: skipped {len(bad)} of {len(files)} file(s) that are not readable images: "
            + "; ".join(bad[:5]) + ("; ..." if len(bad) > 5 else ""), err=True)
    if len(bad) == len(files):
        raise DataError("None of the inputs could be read as an image.")


__all__ = ["Classifier", "as_rgb_array", "collect_images", "format_prediction", "imagenet_names", "label_files",
           "write_labels"]
