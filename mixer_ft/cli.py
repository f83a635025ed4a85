"""The `mixer-ft` command line. Each command is a thin layer over the library."""

from __future__ import annotations

import json
import sys
from typing import Annotated, Optional

import typer

from mixer_ft.errors import MixerFtError

app = typer.Typer(
    help="Fine-tune pretrained MLP-Mixer checkpoints.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


@app.callback()
def _root() -> None:
    """Fine-tune pretrained MLP-Mixer checkpoints."""


@app.command()
def inspect(
    source: Annotated[str, typer.Argument(help="A variant (B/16), a weight source (file, folder, URL, "
                                                "hf-hub:..., timm:...) or an upstream name (in1k, in21k).")],
    model: Annotated[Optional[str], typer.Option("--model", "-m", help="Variant, needed with in1k/in21k.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
) -> None:
    """Show the architecture, parameter count, GELU flavour and classes of a variant or checkpoint."""
    import torch

    from mixer_ft.model import MixerConfig, MlpMixer, num_params
    from mixer_ft.weights import load_checkpoint

    try:
        cfg, path = MixerConfig.from_variant(source), None
        where = "variant definition (no weights)"
    except MixerFtError:
        ckpt = load_checkpoint(source, variant=model)
        cfg, path = ckpt.config(), ckpt.path
        where = path or source
    with torch.device("meta"):  # counting parameters needs no memory
        net = MlpMixer(cfg)
    cfg = net.config
    info = {"source": source, "path": path, "variant": cfg.variant, **cfg.to_dict(),
            "num_tokens": cfg.num_tokens, "num_params": num_params(net)}
    if as_json:
        typer.echo(json.dumps(info))
        return
    rows = [
        ("source", source), ("read from", where),
        ("architecture", cfg.describe()),
        ("input", f"{cfg.img_size}x{cfg.img_size}, {cfg.num_tokens} tokens, mean {cfg.mean}, std {cfg.std}"),
        ("classes", f"{cfg.num_classes}"),
        ("parameters", f"{info['num_params']:,}"),
        ("gelu", cfg.gelu),
    ]
    for k, v in rows:
        typer.echo(f"{k:<13} {v}")


@app.command()
def data(
    source: Annotated[str, typer.Argument(help="cifar10, cifar100, hf:owner/name, an image folder or its "
                                                ".tar/.tar.gz, or a CIFAR python-version archive.")],
    image_column: Annotated[Optional[str], typer.Option(help="Image column of a Hub data set.")] = None,
    label_column: Annotated[Optional[str], typer.Option(help="Label column of a Hub data set.")] = None,
    val_fraction: Annotated[float, typer.Option(help="Share of train held out as minival.")] = 0.02,
    seed: Annotated[int, typer.Option(help="Seed of the train/minival cut.")] = 0,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
) -> None:
    """Show a data set's splits, classes and image size (decoding it into the cache on first use)."""
    import logging

    from mixer_ft.data import load_data

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s: %(message)s")
    info = load_data(source, image_column=image_column, label_column=label_column).summary(val_fraction, seed)
    if as_json:
        typer.echo(json.dumps(info))
        return
    h, w = info["image_size"]
    typer.echo(f"{'source':<11} {info['source']}")
    typer.echo(f"{'read from':<11} {info['location']}")
    for split, n in info["splits"].items():
        typer.echo(f"{split:<11} {n:,} images")
    typer.echo(f"{'image size':<11} {h}x{w}")
    typer.echo(f"{'classes':<11} {len(info['classes'])}: {' '.join(info['classes'])}")
    if info["skipped"]:
        typer.echo(f"{'skipped':<11} {info['skipped']} image(s) that could not be decoded")


def main() -> None:
    """Entry point: run the app; a user error prints its message and exits 2, no traceback."""
    try:
        app()
    except MixerFtError as e:
        typer.echo(f"error: {e}", err=True)
        sys.exit(2)
