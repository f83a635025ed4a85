"""A model as a file for deployment: ONNX, for onnxruntime, TensorRT, OpenVINO and the browser
(``mixer-ft export MODEL --format onnx --output model.onnx``).

The graph takes ``pixel_values``, a float32 batch of any size (N, 3, H, W) already preprocessed, and gives
``logits`` (N, classes). Beside it, ``<output>.preprocess.json`` says how images become ``pixel_values`` as
``predict`` makes them (upright RGB; longer side at most 512, antialiased; the whole image resized to H x W,
bilinear with half-pixel centres; scaled to [0, 1]; then (x - mean) / std), the class names in head order,
and the opset: what a program without mixer_ft needs to use the file. The model is exported in float32,
eager (the textbook layout: the fast path's token-major products are the same numbers).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mixer_ft.atomic import atomic_write, atomic_write_text, json_text
from mixer_ft.errors import ConfigError
from mixer_ft.model.config import MAX_SIDE
from mixer_ft.publish import public_source

OPSET = 18  # ONNX's opset: onnxruntime 1.16 and later run it; torch's exporter writes it without down-conversion
FORMATS = ("onnx",)


def preprocess_path(output: Path) -> Path:
    """Where the preprocessing of the exported ``output`` is written: ``model.onnx`` -> ``model.preprocess.json``."""
    return output.with_suffix(".preprocess.json")


def export_onnx(source: str | Path, output: str | Path, *, variant: str | None = None, opset: int = OPSET) -> dict[str, Any]:
    """Export the model of ``source`` (any model source: a model or run folder, a weight file, in1k, ...) to ONNX at
    ``output``, with a dynamic batch; returns what ``<output>.preprocess.json`` holds.

    Raises:
        ConfigError: the exporter is not installed (``pip install 'mixer_ft[export]'``).
    """
    import importlib.util

    if importlib.util.find_spec("onnxscript") is None or importlib.util.find_spec("onnx") is None:
        raise ConfigError("mixer-ft export needs onnx and onnxscript: pip install 'mixer_ft[export]'.")
    import torch

    from mixer_ft.use.infer import Classifier

    clf = Classifier.from_pretrained(source, variant=variant, device="cpu", precision="no")
    model = clf.model.float().eval().set_fast_path(False)
    cfg = model.config
    example = torch.zeros(2, 3, cfg.img_size, cfg.img_size)
    batch = torch.export.Dim("batch", min=1, max=1 << 16)
    output = Path(output)

    def write(tmp: Path) -> None:
        with torch.no_grad():
            torch.onnx.export(model, (example,), str(tmp), input_names=["pixel_values"], output_names=["logits"],
                              opset_version=opset, dynamic_shapes={"x": {0: batch}}, dynamo=True, external_data=False,
                              verbose=False)

    atomic_write(output, write)
    meta = {"format": "onnx", "opset": opset, "input": "pixel_values", "output": "logits",
            "input_shape": ["batch", cfg.in_chans, cfg.img_size, cfg.img_size], "input_dtype": "float32",
            "resize": [{"longer_side_at_most": MAX_SIDE, "interpolation": "bilinear", "antialias": True,
                        "keep_aspect": True},
                       {"size": [cfg.img_size, cfg.img_size], "interpolation": "bilinear", "antialias": False,
                        "keep_aspect": False, "half_pixel_centers": True}],
            "rescale_factor": 1 / 255, "mean": list(cfg.mean), "std": list(cfg.std), "labels": list(clf.classes),
            "source": public_source(str(source))}
    atomic_write_text(preprocess_path(output), json_text(meta, indent=2) + "\n")
    return meta


__all__ = ["FORMATS", "OPSET", "export_onnx", "preprocess_path"]
