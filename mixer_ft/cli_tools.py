"""The `mixer-ft` commands on what runs leave behind: the data cache (`cache`, `cache clean`), a run's learning
curve (`plot`) and a model as a file for deployment (`export`). Registered on the app in :mod:`mixer_ft.cli`;
each is a thin layer over the library."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from mixer_ft.cli_checks import check_export, check_plot

cache_app = typer.Typer(help="The data cache: list its entries, or clean them.", no_args_is_help=False)


@cache_app.callback(invoke_without_command=True)
def cache(ctx: typer.Context, as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False) -> None:
    """List the data cache's entries (MIXER_FT_CACHE/data): source, size, images, last use; `clean` removes them."""
    from mixer_ft.data.cache_entries import listing

    if ctx.invoked_subcommand is None:
        typer.echo(listing(as_json))


@cache_app.command("clean", short_help="Remove entries: those named, or every one.")
def cache_clean(keys: Annotated[Optional[list[str]], typer.Argument(help="Entries to remove (their keys, as "
                                                                         "`mixer-ft cache` lists them); none: all.")] = None) -> None:
    """Remove data cache entries: those named, or every one (only entries this tool made; one another process is building stays)."""
    from mixer_ft.data.cache_entries import clean

    typer.echo(clean(keys or []))


def plot(run: Annotated[str, typer.Argument(metavar="RUN", help="A run folder, or a run record (results/<name>.json).")],
         output: Annotated[Optional[str], typer.Option(help="The PNG (default: curve.png in the run folder, or the "
                                                           "record's name with .png).")] = None) -> None:
    """Draw a run's learning curve: training loss and accuracy, minival accuracy and the learning rate, by step."""
    from mixer_ft.report.curves import plot_curve

    check_plot(output)
    typer.echo(f"plot: {plot_curve(run, output)}")


def export(model_source: Annotated[str, typer.Argument(metavar="MODEL", help="A model or run folder, a weight file, "
                                                                             "in1k, in21k, hf-hub:...")],
           output: Annotated[str, typer.Option(help="The file to write, e.g. model.onnx; its preprocessing is "
                                                    "written beside it (model.preprocess.json).")],
           format_: Annotated[str, typer.Option("--format", help="onnx (opset 18, any batch size).")] = "onnx",
           model: Annotated[Optional[str], typer.Option(help="The variant, for a weight file that does not say.")] = None,
           ) -> None:
    """Export a model for deployment: ONNX for onnxruntime, TensorRT or OpenVINO, its preprocessing beside it."""
    from mixer_ft.use.export import FORMATS, export_onnx, preprocess_path

    check_export(format_, FORMATS, output)
    meta = export_onnx(model_source, output, variant=model)
    typer.echo(f"export: {output} (ONNX opset {meta['opset']}, input {meta['input']} {meta['input_shape']}, "
               f"{len(meta['labels'])} classes); preprocessing: {preprocess_path(Path(output))}")


__all__ = ["cache", "cache_app", "cache_clean", "export", "plot"]
