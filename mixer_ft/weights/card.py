"""The model card (README.md) of a saved model folder, in the Hugging Face format.

A YAML metadata header (library, tags, data set, metrics and results as ``model-index``), then
what the model is, its numbers, and how to load it. The header is written as JSON values, which
YAML reads as they are.
"""

from __future__ import annotations

from typing import Any

from mixer_ft.atomic import json_text
from mixer_ft.model.config import MixerConfig, timm_name
from mixer_ft.text import md_cell

DEFAULT_LICENSE = "apache-2.0"  # Google's Mixer weights are Apache-2.0; recipe key `license` sets another


def _header(cfg: MixerConfig, classes: list[str] | None, provenance: dict[str, Any]) -> list[str]:
    """The YAML metadata the Hub reads: library, license, tags, data set (only a Hub one the run used), results."""
    timm_loads = cfg.variant is not None  # timm builds the paper's variants (see docs/using-a-model.md)
    # A custom size: transformers runs the folder's own model code (the Hub's "custom_code" tag).
    tags = ["image-classification", "mlp-mixer", "mixer_ft"] + (["timm"] if timm_loads else ["custom_code"])
    lines = ["---", f"library_name: {'timm' if timm_loads else 'transformers'}",
             f"license: {json_text(provenance.get('license', DEFAULT_LICENSE))}",
             "pipeline_tag: image-classification", "tags:"] + [f"- {t}" for t in tags]
    hub_id = provenance.get("hub_dataset")  # the run names it; a local copy of a Hub set is not that set
    if hub_id:
        lines += ["datasets:", f"- {hub_id}"]
    lines += ["metrics:", "- accuracy"]
    if "test_accuracy" in provenance:
        dataset = {"name": hub_id or str(provenance.get("data_source") or provenance.get("dataset")),
                   "type": hub_id or "imagefolder", "split": "test"}
        result = {"task": {"type": "image-classification", "name": "Image Classification"}, "dataset": dataset,
                  "metrics": [{"type": "accuracy", "value": provenance["test_accuracy"], "name": "Test accuracy"}]}
        lines += ["model-index:", f"- name: {json_text(provenance.get('name', 'mixer'))}",
                  f"  results: [{json_text(result)}]"]
    return lines + ["---", ""]


def _facts(cfg: MixerConfig, classes: list[str] | None, evaluation: dict[str, Any],
           provenance: dict[str, Any]) -> list[str]:
    def pct(key: str) -> str:
        return f"{100 * provenance[key]:.2f}% ({provenance.get(key.replace('accuracy', 'images'), '?'):,} images)"

    rows = [("architecture", cfg.describe()),
            ("input", f"{cfg.img_size}x{cfg.img_size} RGB, the whole image resized (bilinear), "
                      f"normalised with mean {list(cfg.mean)} and std {list(cfg.std)}"),
            ("GELU", f"{cfg.gelu}")]
    if classes:
        shown = ", ".join(classes[:20]) + (f", ... ({len(classes)} in all)" if len(classes) > 20 else "")
        rows.append(("classes", shown))
    views = ["the image"] + (["its mirror image"] if evaluation.get("flip") else [])
    if evaluation.get("translate"):
        views.append(f"copies shifted {evaluation['translate']} pixels diagonally")
    rows.append(("evaluation views", ", ".join(views)))
    if provenance.get("data_source"):
        size = f"{len(classes)} classes, " if classes else ""
        counts = [f"{provenance[k]:,} {what} images" for k, what in (("train_images", "training"), ("test_images", "test"))
                  if isinstance(provenance.get(k), int)]
        rows.append(("data set", f"{provenance['data_source']} ({size}{', '.join(counts) or 'size not recorded'})"))
    for key, label in (("upstream", "upstream weights"), ("steps", "steps"),
                       ("global_batch", "global batch"), ("git_commit", "mixer_ft commit")):
        if provenance.get(key) is not None:
            rows.append((label, str(provenance[key])))
    for key in ("test_accuracy", "minival_accuracy"):  # the image alone: what timm and transformers compute
        if key in provenance:
            rows.append((key.replace("_", " "), pct(key)))
    if "test_accuracy_views" in provenance:
        rows.append(("test accuracy with the evaluation views above", f"{100 * provenance['test_accuracy_views']:.2f}% "
                     "(`mixer-ft predict --flip`/`--translate`; timm and transformers score the image alone)"))
    return ["| | |", "|---|---|"] + [f"| {k} | {md_cell(v)} |" for k, v in rows]


def model_card(cfg: MixerConfig, classes: list[str] | None = None, evaluation: dict[str, Any] | None = None,
               provenance: dict[str, Any] | None = None) -> str:
    """README.md text for a model folder holding a model of ``cfg``."""
    evaluation, provenance = evaluation or {}, provenance or {}
    name = provenance.get("name", "mixer")
    lines = _header(cfg, classes, provenance)
    what = f"A {cfg.describe().split(' (')[0]} image classifier"
    if provenance.get("upstream") not in (None, "none"):
        what += f" fine-tuned from `{provenance['upstream']}` weights"
    if provenance.get("dataset"):
        what += f" on {provenance['dataset']}"
    lines += [f"# {name}", "", what + ", made with mixer_ft, a toolkit for fine-tuning MLP-Mixers.", ""]
    lines += _facts(cfg, classes, evaluation, provenance) + ["", "## Use it", "", "```bash",
              "mixer-ft predict path/to/this/folder photo.jpg --top-k 3",
              "mixer-ft evaluate path/to/this/folder --dataset DATA --json", "```", "", "```python",
              "from mixer_ft import Classifier", "", 'classify = Classifier.from_pretrained("path/to/this/folder")',
              'classify("photo.jpg")  # [{"label": ..., "score": ...}, ...]', "```"]
    if not cfg.variant:
        lines += ["", "## In transformers", "", "timm registers the paper's seven Mixer shapes only (its model functions "
                  "fix patch, depth and width), so it cannot build this custom size. transformers can, with the model "
                  "code in this folder (`modeling_mixer_ft.py`, torch and transformers only):", "", "```python",
                  "from transformers import pipeline", "",
                  'classify = pipeline("image-classification", model="path/to/this/folder", trust_remote_code=True)',
                  'classify("photo.jpg")', "```"]
    if cfg.variant:
        gelu = ("this model was trained with the tanh one, about 1e-4 apart in the logits" if cfg.gelu == "tanh"
                else "as this model was trained")
        lines += ["", "## In timm", "", f"The weights are timm's `{timm_name(cfg.variant)}` with this folder's head, "
                  f"so timm loads the folder as it is (timm runs the exact GELU: {gelu}).", "", "```python",
                  "import timm", "", 'model = timm.create_model("local-dir:path/to/this/folder", pretrained=True)', "```"]
    return "\n".join(lines) + "\n"


__all__ = ["model_card"]
