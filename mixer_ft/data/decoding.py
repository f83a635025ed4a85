"""Decoding a source's images for the cache: in worker processes, one per core, a bounded window at a time.

The cache is built by one pass over a source's images: each is read here (its bytes, at most
:data:`WINDOW_BYTES` of them held at once, so memory stays bounded whatever the set's size), then decoded in forked
worker processes. The compact store's index is read from each file's header here, where the bytes are (30 us a
photo: sending 55 KB to a worker costs more); only the files it must decode (small ones, checked; those larger
than their pixels, re-encoded) go to the workers, which start only if one does. A forked worker has only the
thread that forked it, so what the workers use is imported whole first (a module half-imported by another
thread at the fork would hang them), and each runs torch on one thread.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from mixer_ft.data.images import decode_workers, or_why, to_rgb_array
from mixer_ft.errors import SourceError

if TYPE_CHECKING:
    from mixer_ft.data.sources import Reader


def _read(item: Any) -> Any:
    """An item's bytes (or PIL image, or array), read here; a file that cannot be read becomes an error."""
    if isinstance(item, np.ndarray):
        return item
    try:
        return item[1]()
    except OSError as e:
        return OSError(e.strerror or str(e))
    except SourceError as e:  # a file not whole, or not a file (the bounded reader's verdict)
        return OSError(e.why)


WINDOW_BYTES = 256 << 20  # encoded bytes held at once while decoding, whatever the images' sizes


def _window(items: Iterator[tuple[str, str | int, Any]], most: int) -> list[tuple[tuple[str, str | int, Any], Any]]:
    """The next images and their bytes: at most ``most`` of them, and no more once WINDOW_BYTES are held."""
    window, held = [], 0
    for item in items:
        data = _read(item[2])
        window.append((item, data))
        held += len(data) if isinstance(data, (bytes, bytearray)) else 0
        if len(window) >= most or held >= WINDOW_BYTES:
            break
    return window


def _decode(payload: tuple[Any, tuple[int, int] | None, int]) -> np.ndarray | str:
    """One image (bytes, a PIL image or an array) decoded, or why it could not be (a worker process runs this)."""
    data, size, max_side = payload
    return or_why(data, lambda d: to_rgb_array(d if isinstance(d, np.ndarray) else ("", lambda: d), size,
                                               max_side=max_side))


def _one_thread() -> None:
    """A forked decode worker's torch on one thread, as DataLoader's workers (one worker a core needs no more, and
    a forked child lacks the parent's OpenMP threads), and PIL's image buffers reused (see keep_image_memory)."""
    import torch

    from mixer_ft.data.images import keep_image_memory

    torch.set_num_threads(1)
    keep_image_memory(4)


def _whole_before_fork() -> None:
    """Import, in this thread, what the decode workers use. A fork taken while another thread is importing a
    module leaves it half-imported in the child, its lock held by a thread the child does not have: the child's
    first use of it hangs for good. Importing it here waits for any such import to finish first."""
    from PIL import Image

    from mixer_ft.data.images import torch_interpolate

    torch_interpolate()  # the resize's torch, under the lock other decoding threads take to import it

    Image.init()  # PIL's format plugins, imported on first open otherwise


def decode_each(reader: Reader, size: tuple[int, int] | None, max_side: int,
             index_only: bool = False) -> Iterator[tuple[str, str | int, str, Any]]:
    """(split, label, name, image or why not) for each image of ``reader``, in order.

    Encoded images are decoded in worker processes, a bounded window of them at a time, so host
    memory stays bounded; a progress bar shows images done and images/s. ``index_only``: instead of
    the image, (height, width, bytes to keep) from its header (:func:`mixer_ft.data.encoded.index_image`).
    """
    import multiprocessing

    from mixer_ft.data.encoded import index_from_header, index_image
    from mixer_ft.data.ticker import Ticker

    workers = decode_workers() if "fork" in multiprocessing.get_all_start_methods() else 1
    items = reader.items()
    pool = None

    def each(work: Any, payloads: list[Any]) -> list[Any]:
        nonlocal pool
        if workers > 1 and pool is None and payloads:  # started when first needed: indexing may need none
            _whole_before_fork()
            pool = multiprocessing.get_context("fork").Pool(workers, initializer=_one_thread)
        return pool.map(work, payloads, chunksize=4) if pool else list(map(work, payloads))

    try:
        with Ticker(f"{'indexing' if index_only else 'decoding'} {Path(reader.location).name}") as bar:
            while window := _window(items, 64 * workers):
                if index_only:  # most files are indexed from their header, here; the others decoded by the workers
                    results: list[Any] = [index_from_header(data, max_side) for _, data in window]
                    todo = [k for k, got in enumerate(results) if got is None]
                    for k, got in zip(todo, each(index_image, [(window[k][1], max_side) for k in todo])):
                        results[k] = got
                else:
                    results = each(_decode, [(data, size, max_side) for _, data in window])
                kept, window = window, [item for item, _ in window]
                for (split, label, item), (_, data), arr in zip(window, kept, results):
                    if index_only and not isinstance(arr, str) and arr[2] is None:
                        arr = (arr[0], arr[1], data)  # the file's own bytes, which stayed here
                    yield split, label, "array" if isinstance(item, np.ndarray) else item[0], arr
                    bar.total = reader.total  # known once the reader has listed its images
                    bar.update(1)
    finally:
        if pool:
            pool.terminate()


__all__ = ["WINDOW_BYTES", "decode_each"]
