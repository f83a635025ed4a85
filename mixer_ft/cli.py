"""The `mixer-ft` command line. Each command is a thin layer over the library."""

from __future__ import annotations

import sys
from typing import Annotated, Optional

import typer

from mixer_ft import cli_tools
from mixer_ft.atomic import json_text
from mixer_ft.cli_checks import check_folder as _check_folder
from mixer_ft.cli_checks import check_plot as _check_plot
from mixer_ft.cli_checks import positive_int as _positive_int
from mixer_ft.model.config import FEWSHOT_SHOTS
from mixer_ft.train.recipe import default


def _default(key: str) -> str:
    """A recipe default for help text, taken from Recipe (parentheses: brackets are markup to Rich)."""
    return f" (default: {default(key)})"


_SHOTS = ",".join(map(str, FEWSHOT_SHOTS))

# Options of every command that builds a model from weights.
Variant = Annotated[Optional[str], typer.Option("--model", "-m", help="Variant, needed with in1k/in21k.")]
Device = Annotated[Optional[str], typer.Option(help="cpu or cuda (default: cuda where available).")]
ImgSize = Annotated[Optional[int], typer.Option(help="Build the model for this input size (default: the weights' "
                                                "own). A whole multiple of it tiles the weights exactly.")]
Resize = Annotated[str, typer.Option(help="How the weights reach another --img-size: tile (exact, whole "
                                     "multiples) or resample (approximate, any multiple of the patch).")]

app = typer.Typer(
    help="Fine-tune pretrained MLP-Mixer checkpoints.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,  # plain click help: no "<bool>" on flags, nothing cut
)


def _version(value: bool) -> None:
    if value:
        from mixer_ft import __version__

        typer.echo(f"mixer-ft {__version__}")
        raise typer.Exit()


@app.callback()
def _root(version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True,
                                                help="Print the version and exit.")] = False) -> None:
    """Fine-tune pretrained MLP-Mixer checkpoints."""


@app.command(short_help='Architecture, parameters and classes of weights.')
def inspect(
    source: Annotated[str, typer.Argument(help="A variant (B/16), a weight source (file, folder, URL, "
                                                "hf-hub:..., timm:...) or an upstream name (in1k, in21k).")],
    model: Variant = None,
    img_size: ImgSize = None,
    resize: Resize = "tile",
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
) -> None:
    """Show the architecture, parameter count, GELU flavour and classes of a variant or checkpoint."""
    from mixer_ft.weights.loading import describe

    info, cfg, where = describe(source, model, img_size, resize)
    if as_json:
        typer.echo(json_text(info))
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


@app.command(short_help='Splits, classes and sizes of a data set.')
def data(
    source: Annotated[str, typer.Argument(help="cifar10, cifar100, hf:owner/name, an image folder or its "
                                                ".tar/.tar.gz, or a CIFAR python-version archive.")],
    image_column: Annotated[Optional[str], typer.Option(help="Image column of a Hub data set.")] = None,
    label_column: Annotated[Optional[str], typer.Option(help="Label column of a Hub data set.")] = None,
    val_fraction: Annotated[float, typer.Option(help="Share of train held out as minival.")] = default("val_fraction"),
    seed: Annotated[int, typer.Option(help="Seed of the train/minival cut.")] = default("seed"),
    test_fraction: Annotated[float, typer.Option(help="Of a folder without split folders (<class>/*), the share "
                                                      "of each class held out as the test split.")] = default("test_fraction"),
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
    streaming: Annotated[bool, typer.Option("--streaming", help="Show shards or hf:owner/name as a run with "
                                                                "--streaming reads them: shards and classes, nothing "
                                                                "read or cached (a shard URL always is).")] = False,
) -> None:
    """Show a data set's splits, classes and image size (decoding it into the cache on first use)."""
    import logging

    from mixer_ft.data.cache import load_data, summary_lines
    from mixer_ft.data.stream import is_streamed

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s: %(message)s")
    if is_streamed(source, streaming):  # shown from its names alone: a stream is not read to be counted
        from mixer_ft.data.sources import open_stream
        from mixer_ft.data.stream import stream_summary_lines

        shown = open_stream(source, image_column, label_column).summary(val_fraction)
        typer.echo(json_text(shown) if as_json else "\n".join(stream_summary_lines(source, shown)))
        return
    info = load_data(source, image_column=image_column, label_column=label_column,
                     test_fraction=test_fraction).summary(val_fraction, seed)
    typer.echo(json_text(info) if as_json else "\n".join(summary_lines(info)))
    for warning in info["warnings"]:
        typer.echo(f"warning: {warning}", err=True)


@app.command(short_help='Fine-tune a Mixer and write its run record.')
def finetune(
    recipe: Annotated[Optional[str], typer.Option(help="A TOML recipe (see recipes/); flags override it.")] = None,
    upstream: Annotated[Optional[str], typer.Option(help="in1k, in21k, none, or any weight source"
                                                         + _default("upstream"))] = None,
    model: Annotated[Optional[str], typer.Option(help="Variant, e.g. B/16 or L/16" + _default("model"))] = None,
    dataset: Annotated[Optional[str], typer.Option(help="cifar10, cifar100, hf:owner/name, a folder or archive"
                                                        + _default("dataset"))] = None,
    streaming: Annotated[Optional[bool], typer.Option("--streaming", help="Read shards or hf:owner/name shard by shard "
                                                      "as the run trains, with no cache (a shard URL always is).")] = None,
    steps: Annotated[Optional[int], typer.Option(help="Optimizer steps" + _default("steps"))] = None,
    batch: Annotated[Optional[int], typer.Option(help="Global batch, whatever the process count"
                                                      + _default("global_batch"))] = None,
    micro_batch: Annotated[Optional[str], typer.Option(help="Per-process forward batch, or 'auto'; the rest is accumulated.")] = None,
    lr: Annotated[Optional[float], typer.Option(help="Peak learning rate" + _default("lr"))] = None,
    warmup: Annotated[Optional[int], typer.Option(help="Linear warm-up steps" + _default("warmup_steps"))] = None,
    eval_every: Annotated[Optional[int], typer.Option(help="Minival accuracy every N steps"
                                                           + _default("eval_every"))] = None,
    seed: Annotated[Optional[int], typer.Option(help="Seed of init, split, order and augmentation"
                                                     + _default("seed"))] = None,
    output_dir: Annotated[Optional[str], typer.Option(help="Run folder (default: runs/<name>); an existing one "
                                                           "is resumed.")] = None,
    mixed_precision: Annotated[Optional[str], typer.Option(help="auto (bf16 where supported), no, bf16, fp16"
                                                                + _default("mixed_precision"))] = None,
    set_: Annotated[Optional[list[str]], typer.Option("--set", help="Any other recipe key: --set key=value.")] = None,
    fresh: Annotated[bool, typer.Option(help="Ignore checkpoints in the output folder and start over.")] = False,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Print the resolved recipe (TOML, each key's source) "
                                                           "and exit; build nothing.")] = False,
) -> None:
    """Fine-tune a Mixer (upstream protocol by default) and write a run record to results/.

    With no recipe and no --steps or --epochs, the schedule's length follows the BiT-HyperRule by the
    size of the training split (500 steps under 20,000 images), as the paper fine-tunes small sets.
    """
    from mixer_ft.train.loop import finetune as run
    from mixer_ft.train.recipe import to_toml
    from mixer_ft.train.resolve import resolve

    flags = {"upstream": upstream, "model": model, "dataset": dataset, "streaming": streaming, "steps": steps,
             "global_batch": batch,
             "lr": lr, "warmup_steps": warmup, "eval_every": eval_every, "seed": seed, "output_dir": output_dir,
             "mixed_precision": mixed_precision}
    if micro_batch is not None:
        flags["micro_batch"] = micro_batch if micro_batch == "auto" else _positive_int(micro_batch, "--micro-batch")
    r, origin, said = resolve(recipe, flags, set_ or [], count_only=dry_run)
    if said and not dry_run:  # a dry run's TOML says it in its comments
        typer.echo(said)
    if dry_run:
        from mixer_ft.train.methods import trainable_said

        typer.echo(to_toml(r, origin) + f"# {trainable_said(r, r.variant, r.architecture)}")
        return
    run(r, resume=not fresh)


@app.command(short_help="Choose hyperparameters on minival from a grid.")
def sweep(
    grid: Annotated[list[str], typer.Option(help="key=v1,v2,... (any recipe key; repeat for a grid), e.g. "
                                                 "lr=0.001,0.003,0.01,0.03.")],
    recipe: Annotated[Optional[str], typer.Option(help="A TOML recipe; --set overrides it.")] = None,
    dataset: Annotated[Optional[str], typer.Option(help="The data set (else the recipe's).")] = None,
    set_: Annotated[Optional[list[str]], typer.Option("--set", help="Any other recipe key: --set key=value.")] = None,
) -> None:
    """Run every point of a grid as an ordinary run (resumable, its own record), choose by minival
    accuracy only, and report the chosen point's test accuracy; the sweep record goes to results/."""
    from mixer_ft.report.sweep import parse_grid, run_sweep, summary
    from mixer_ft.train.resolve import resolve

    grid_ = parse_grid(grid)
    base, _, said = resolve(recipe, {"dataset": dataset}, set_ or [])
    if said and not {"steps", "epochs"} & set(grid_):  # the rule sets each point's schedule
        typer.echo(said)
    record = run_sweep(base, grid_)
    if record:  # the main process's
        typer.echo(summary(record), nl=False)
        typer.echo(f"record: {record['file']}", err=True)


_MODEL_HELP = ("A model folder, a run folder (its model/, else its newest checkpoint), or any weight source "
               "of --upstream (file, URL, hf-hub:..., timm:..., in1k, in21k).")


@app.command(short_help='Label images with a trained model.')
def predict(
    model_source: Annotated[str, typer.Argument(metavar="MODEL", help=_MODEL_HELP)],
    inputs: Annotated[list[str], typer.Argument(metavar="INPUT...", help="Image files, folders (searched "
                                                "recursively) or globs.")],
    model: Variant = None,
    top_k: Annotated[int, typer.Option(help="Classes shown per image.")] = 1,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object per image, one per line.")] = False,
    as_csv: Annotated[bool, typer.Option("--csv", help="CSV: one row per image and rank.")] = False,
    batch: Annotated[int, typer.Option(help="Images per forward pass.")] = 64,
    flip: Annotated[bool, typer.Option("--flip", help="Also score each image's mirror image (test-time views; "
                                                      "by default the image alone, as timm and transformers).")] = False,
    translate: Annotated[int, typer.Option(help="Also score copies shifted N pixels (test-time views).")] = 0,
    device: Device = None,
    img_size: ImgSize = None,
    resize: Resize = "tile",
) -> None:
    """Label images with a trained model: top-k classes and probabilities for each."""
    from mixer_ft.errors import ConfigError
    from mixer_ft.use.infer import Classifier, collect_images, write_labels

    if top_k < 1 or batch < 1:
        raise ConfigError("--top-k and --batch must be positive.")
    if as_json and as_csv:
        raise ConfigError("Choose one of --json and --csv.")
    files = collect_images(inputs)
    clf = Classifier.from_pretrained(model_source, variant=model, device=device, img_size=img_size, resize=resize,
                                     mirror=flip, shift=translate)
    if note := clf.views_note():
        typer.echo(note, err=True)
    fmt = "json" if as_json else "csv" if as_csv else "table"
    write_labels(clf, files, fmt, top_k, batch, say=typer.echo)


@app.command(short_help='Score a model on a labelled data set.')
def evaluate(
    model_source: Annotated[str, typer.Argument(metavar="MODEL", help=_MODEL_HELP)],
    dataset: Annotated[str, typer.Option(help="Any --dataset source: cifar10, hf:owner/name, a folder or archive.")],
    split: Annotated[str, typer.Option(help="test, minival or train.")] = "test",
    model: Variant = None,
    flip: Annotated[bool, typer.Option("--flip", help="Also score mirror images (test-time views; by default the "
                                                      "image alone, as the record's test_accuracy).")] = False,
    translate: Annotated[int, typer.Option(help="Also score copies shifted N pixels (test-time views).")] = 0,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
    plot: Annotated[Optional[str], typer.Option(help="Draw the confusion matrix to this PNG.")] = None,
    device: Device = None,
    img_size: ImgSize = None,
    resize: Resize = "tile",
) -> None:
    """Score a model on a labelled data set: accuracy, per-class accuracy, confusion matrix."""
    import logging

    from mixer_ft.data.cache import load_data
    from mixer_ft.use.evaluate import evaluate_split, plot_confusion, summary_text
    from mixer_ft.use.infer import Classifier

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s: %(message)s")
    _check_plot(plot)  # before minutes of evaluation
    if plot:
        from mixer_ft.data.sources import check_outside_data

        check_outside_data(dataset, plot, "plot")
    clf = Classifier.from_pretrained(model_source, variant=model, device=device, mirror=flip, shift=translate,
                                     img_size=img_size, resize=resize)
    made = clf.provenance  # the run's own cut of train into train and minival
    data = load_data(dataset, test_fraction=made.get("test_fraction", default("test_fraction")))
    result = evaluate_split(clf, data, split, val_fraction=made.get("val_fraction", default("val_fraction")),
                            seed=made.get("seed", default("seed")))
    if plot:
        typer.echo(f"plot: {plot_confusion(result, plot)}", err=True)
    typer.echo(json_text(result) if as_json else summary_text(result))


@app.command(short_help='Upload a model folder to the Hugging Face Hub.')
def push(
    model_source: Annotated[str, typer.Argument(metavar="MODEL", help="A model folder, or a finished run folder.")],
    repo_id: Annotated[str, typer.Argument(help="The Hub repository, owner/name (made if missing).")],
    private: Annotated[bool, typer.Option(help="Make a new repository private.")] = False,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="List what would be uploaded; upload nothing.")] = False,
) -> None:
    """Upload a model folder (weights, config, model card) to the Hugging Face Hub."""
    from mixer_ft.weights.push import files_to_push
    from mixer_ft.weights.push import push as upload

    if dry_run:
        for f in files_to_push(model_source):
            typer.echo(f"{f}  ({f.stat().st_size:,} bytes)")
        return
    typer.echo(upload(model_source, repo_id, private=private))


@app.command(short_help='Few-shot linear evaluation of frozen features.')
def fewshot(
    upstream: Annotated[str, typer.Option(help="The weights whose features are scored: any --upstream source.")],
    dataset: Annotated[str, typer.Option(help="Any --dataset source: cifar10, hf:owner/name, a folder or archive.")],
    model: Variant = None,
    shots: Annotated[str, typer.Option(help="Training images per class, comma-separated.")] = _SHOTS,
    seeds: Annotated[int, typer.Option(help="Random draws of the shots per count; mean and std over them.")] = 3,
    split: Annotated[str, typer.Option(help="The split scored: test or minival.")] = "test",
    img_size: ImgSize = None,
    resize: Resize = "tile",
    device: Device = None,
    results: Annotated[str, typer.Option(help="Folder for the record (kind \"fewshot\").")] = "results",
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
) -> None:
    """Few-shot linear evaluation of frozen features: a closed-form least-squares classifier on K
    images per class (big_vision's fewshot_lsr, l2 = 1024), accuracy per K over several draws."""
    import logging

    from mixer_ft.use.fewshot import fewshot_text, parse_shots, run_fewshot

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s: %(message)s")
    _check_folder(results, "--results")
    from mixer_ft.data.sources import check_outside_data

    check_outside_data(dataset, results, "results folder")
    rec = run_fewshot(upstream, dataset, variant=model, shots=parse_shots(shots), seeds=seeds, split=split,
                      img_size=img_size, resize=resize, device=device, results_dir=results)
    typer.echo(json_text({k: rec[k] for k in ("upstream", "model", "dataset", "split", "test_images", "seeds", "l2_reg",
                                               "shots")}) if as_json else fewshot_text(rec, upstream))
    typer.echo(f"record: {rec['file']}", err=True)


@app.command(short_help='Published accuracy and time beside ours.')
def table(
    results: Annotated[str, typer.Option(help="Folder of run records.")] = "results",
    format: Annotated[str, typer.Option("--format", help="table, markdown, csv or json.")] = "table",
    plot: Annotated[Optional[str], typer.Option(help="Also draw accuracy and wall-clock side by side to this PNG.")] = None,
) -> None:
    """The published accuracy and wall-clock of each row beside this toolkit's best run of it."""
    import logging

    from mixer_ft.report import table as tables

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s: %(message)s")
    _check_plot(plot)
    rows, other = tables.build(results)
    typer.echo(tables.render(rows, other, format, fewshot=tables.fewshot_runs(results),
                             sweeps=tables.sweep_runs(results)), nl=False)
    if plot:
        typer.echo(f"plot: {tables.plot(rows, plot)}", err=True)


@app.command(short_help="Run the table's rows with their recipes.")
def reproduce(
    rows: Annotated[Optional[str], typer.Option(help="Comma-separated row ids (default: the CIFAR rows), e.g. "
                                                "scratch_cifar10.")] = None,
    results: Annotated[str, typer.Option(help="Folder of run records.")] = "results",
    dataset: Annotated[Optional[str], typer.Option(help="Use this copy of each row's data set (e.g. a local CIFAR-10).")] = None,
) -> None:
    """Run the table's rows one after another with their recipes, skipping rows already recorded
    and resuming one that was interrupted; then print the table."""
    import logging

    from mixer_ft.report.reproduce import reproduce_rows

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s: %(message)s")
    typer.echo(reproduce_rows(rows, results, dataset, say=typer.echo), nl=False)


@app.command(short_help="Training-step speed of ours against timm's.")
def bench(
    model: Annotated[str, typer.Option(help="Variant.")] = "B/16",
    batch: Annotated[int, typer.Option(help="Images per step.")] = 64,
    device: Annotated[Optional[str], typer.Option(help="cpu or cuda [cuda where available].")] = None,
    precision: Annotated[Optional[str], typer.Option(help="fp32 or bf16 [bf16 on CUDA, fp32 on CPU].")] = None,
    img_size: Annotated[int, typer.Option(help="Input size; a whole multiple of 224 gets the tiled architecture that "
                                          "fine-tuning the 224 weights at that size trains.")] = 224,
    steps: Annotated[int, typer.Option(help="Timed steps of each model, taken in alternation (after 3 warm-up steps).")] = 20,
    fast: Annotated[bool, typer.Option(help="Our fast path: token-major layout, fused optimizer, torch.compile "
                                            "on CUDA (--no-fast: the plain model and optimizer).")] = True,
    compile: Annotated[str, typer.Option(help="auto (compiled on CUDA, as finetune), eager, or a torch.compile mode; "
                                              "where ours is compiled, timm is timed compiled too.")] = "auto",
    finetune_data: Annotated[Optional[str], typer.Option(help="Also time `mixer-ft finetune` on this data set.")] = None,
    out: Annotated[Optional[str], typer.Option(help="Save the record in this folder, e.g. results/bench.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
) -> None:
    """Training-step images/s of our Mixer against timm's, in one run (and MFU on CUDA)."""
    from mixer_ft.report.bench import JSON_KEYS, run_bench, save, summary_text

    if batch < 1 or steps < 1:
        from mixer_ft.errors import ConfigError

        raise ConfigError("--batch and --steps must be positive.")
    if out is not None:
        _check_folder(out, "--out")
    rec = run_bench(model, batch, device, img_size, precision, steps, fast=fast, finetune_data=finetune_data,
                    compile_mode=compile)
    where = save(rec, out) if out else None
    if as_json:
        typer.echo(json_text({k: rec[k] for k in JSON_KEYS}))
    else:
        typer.echo(summary_text(rec), nl=False)
    if where:
        typer.echo(f"record: {where}", err=True)


@app.command(short_help="accelerate launch, with one message and mixer-ft's exit status.",
             context_settings={"allow_extra_args": True, "ignore_unknown_options": True},
             options_metavar="[ACCELERATE LAUNCH OPTIONS] COMMAND [ARGS]")
def launch(ctx: typer.Context) -> None:
    """Run COMMAND under `accelerate launch`, with the launcher's options before it,

    e.g. `mixer-ft launch --num_processes 4 finetune --recipe recipes/in21k_l16_cifar10.toml`. A user
    error is printed once, as `error: ...`, and exits 2; a stopped run exits 130 or 143 with its
    message: without the launcher's traceback that plain `accelerate launch` adds (it exits 1).
    """
    from mixer_ft import launch as launcher

    commands = {c.name or c.callback.__name__ for c in app.registered_commands if c.callback is not None}
    sys.exit(launcher.run(launcher.command_line(list(ctx.args), commands)))


# The commands on what runs leave behind (the data cache, a run's curve, a model to export), in mixer_ft/cli_tools.py
app.add_typer(cli_tools.cache_app, name="cache", short_help="List or clean the data cache's entries.")
app.command(short_help="Draw a run's learning curve.")(cli_tools.plot)
app.command(short_help="Export a model to ONNX for deployment.")(cli_tools.export)


def main() -> None:
    """Entry point: run the app; each way it can end is one line and an exit code (:mod:`mixer_ft.exits`)."""
    from mixer_ft.exits import run_to_exit

    run_to_exit(app)
