"""The fine-tune loop on Accelerate: prepare, backward, reduce metrics; nothing clever.

One optimizer step consumes one global batch. Its images, crop boxes and flips are fixed by
(seed, step) alone, and each process takes every P-th of them, split into micro-batches that
Accelerate accumulates: so 1 or N processes, with or without accumulation, train on the same
images with the same augmentation, and a resumed run repeats the uninterrupted one exactly.

:func:`finetune` reads as the run does: :func:`setup`, :func:`restore`, then
:func:`train_step` until the end with :func:`evaluate` and :func:`save_checkpoint` on their
intervals, then :func:`finish`. The steps share one :class:`Run`.
"""

from __future__ import annotations

import contextlib
import os
import platform
import shutil
import signal
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import torch

from mixer_ft.atomic import atomic_write_text, locked, sweep_partial_writes
from mixer_ft.data.preprocess import Preprocess
from mixer_ft.data.sources import check_outside_data
from mixer_ft.data.stream import StreamedSet
from mixer_ft.errors import ConfigError, RunStopped, TrainingError
from mixer_ft.gate import check_path
from mixer_ft.model.mixer import MlpMixer
from mixer_ft.settings import setting
from mixer_ft.text import get_logger
from mixer_ft.train import devices, preflight
from mixer_ft.train.averaging import EMA, Best, swapped
from mixer_ft.train.build import build_model
from mixer_ft.train.checkpoints import Checkpoints
from mixer_ft.train.evaluation import check_shift
from mixer_ft.train.feed import device_images
from mixer_ft.train.guards import check_fresh_deletes_only_ours, check_fresh_removes_no_input
from mixer_ft.train.methods import ADAPTER_NAME, apply_method, save_adapter, saved_model, trainable, trained
from mixer_ft.train.metrics import write_metrics
from mixer_ft.train.objective import Objective
from mixer_ft.train.optim import make_optimizers, make_schedules
from mixer_ft.train.progress import Progress
from mixer_ft.train.recipe import Recipe
from mixer_ft.train.records import check_record_is_ours, record_path, record_text, run_record, write_record
from mixer_ft.train.resume import evaluation_views, restore, save_checkpoint
from mixer_ft.train.run import NonFinite, Run
from mixer_ft.train.run_data import class_weights, count_share, data_loss, make_feed, open_run_data
from mixer_ft.train.signals import SAVE_BOUND_S, StopSignals

log = get_logger(__name__)


# --------------------------------------------------------------------------- setup


def run_folder(recipe: Recipe) -> Path:
    return Path(recipe.output_dir or Path("runs") / recipe.run_name)


def setup(recipe: Recipe, *, fresh: bool = False) -> Run:
    """Data, model, optimizers and schedules, prepared by Accelerate; ``fresh`` drops old checkpoints."""
    from accelerate import Accelerator, PartialState

    use_cpu = devices.use_cpu()
    state = PartialState(cpu=use_cpu)
    per_process = preflight.recipe_needs(recipe.tracker, recipe.global_batch, state.num_processes)
    out = run_folder(recipe)
    if state.is_main_process:
        preflight.writable(out, "output folder")
        preflight.writable(Path(recipe.results_dir), "results folder")
        for inside in ("checkpoints", "model"):  # found now, not when the finished model is saved
            if (out / inside).exists() and not (out / inside).is_dir():
                raise ConfigError(f"{out / inside} is a file where the run keeps its {inside} folder; move it away.")
    threads = devices.set_threads(state.device, setting("LOCAL_WORLD_SIZE"))  # before any work: the data's too
    data, splits, steps_per_epoch, total = open_run_data(recipe, state)
    weights = class_weights(recipe, data, splits)

    torch.manual_seed(recipe.seed)  # the same initial weights (and LoRA's) on every process
    model, head = build_model(recipe, data.classes)
    apply_method(model, recipe)  # what trains: before the optimizers are built, which take only that
    check_shift(recipe.eval_translate, model.config.img_size)
    model.set_fast_path(recipe.fast_path)
    streamed = isinstance(data, StreamedSet)
    on_device = None if streamed else device_images(data, state.device)  # before the micro-batch probe: it counts them
    precision = devices.precision(recipe, state.device)
    micro = devices.micro_batch(recipe, per_process, model, state.device, precision)
    fast_device = state.device.type in ("cpu", "cuda")
    accelerator = Accelerator(mixed_precision=precision,
                              gradient_accumulation_steps=per_process // micro, log_with=recipe.tracker,
                              project_dir=str(out), cpu=use_cpu, dynamo_plugin=devices.dynamo_plugin(recipe, state.device))
    raw_opts = make_optimizers(recipe, model, fused=recipe.fast_path and fast_device)
    schedules = make_schedules(raw_opts, recipe.warmup_steps, total)
    model, *optimizers = accelerator.prepare(model, *raw_opts)
    # The bare module: without keep_torch_compile=False a compiled model unwraps to its
    # OptimizedModule, whose state dict names every weight "_orig_mod.*" (checkpoints and the saved
    # model would not load). Evaluation runs eager on it.
    net: MlpMixer = accelerator.unwrap_model(model, keep_torch_compile=False)
    checkpoints = Checkpoints(out)
    if fresh and accelerator.is_main_process:  # starting over: nothing of an old run may be taken for this one's
        check_fresh_removes_no_input(recipe, out)
        check_fresh_deletes_only_ours(out)
        checkpoints.manifest.delete_all()
    accelerator.wait_for_everyone()
    accelerator.print(head)
    for said in (devices.precision_said(recipe, state.device, precision), threads and devices.threads_said(threads)):
        if said:
            accelerator.print(said)
    run = Run(recipe, accelerator, out, data, splits, model, net, optimizers, schedules,
              Preprocess.for_model(net.config, recipe.crop_area_min, recipe.translate), checkpoints, total,
              steps_per_epoch, micro, per_process // micro, precision, head)
    run.feed = make_feed(run, per_process, on_device)
    run.objective = Objective(len(data.classes), seed=recipe.seed, label_smoothing=recipe.label_smoothing,
                              mixup=recipe.mixup, cutmix=recipe.cutmix, weights=weights,
                              process=accelerator.process_index, device=run.device)
    run.ema = EMA(net, recipe.ema_decay) if recipe.ema_decay else None
    run.best = Best(recipe.early_stop) if recipe.early_stop else None
    if recipe.method != "full":
        train, every = trainable(net)
        accelerator.print(f"method {recipe.method}: {train:,} of {every:,} parameters train ({train / every:.2%})")
    run.loss_check, run.fresh, run.threads = NonFinite(run.device), fresh, threads
    return run


# --------------------------------------------------------------------------- steps


def micro_batches(run: Run, step: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """This process's micro-batches of step ``step``: (model inputs, labels), each augmented when taken."""
    assert run.feed is not None, "setup() gives every run its feed"
    data = run.feed.take(step)
    for a in range(run.accum):
        part = slice(a * run.micro, (a + 1) * run.micro)
        yield data.inputs(run.pre, part), data.labels[part]


def optimizer_step(run: Run, batches: Iterable[tuple[torch.Tensor, torch.Tensor]]) -> tuple[torch.Tensor, torch.Tensor, int]:
    """One optimizer step over ``run.accum`` micro-batches: gradients averaged over them (and over
    processes), clipped to the global norm once, then the update at this step's rate (as vit_jax:
    ``accumulate_gradient``, then ``optax.chain(clip_by_global_norm, sgd)``).

    Returns (loss averaged over micro-batches and processes, this process's correct count, its images).
    """
    r, accel, device = run.recipe, run.accelerator, run.device
    step_loss, correct, seen = torch.zeros((), device=device), torch.zeros((), device=device), 0
    run.lr = max(run.schedules[0].get_last_lr())  # the top rate this update uses: the schedule moves on after it
    for part, (x, y) in enumerate(batches):
        x, targets = run.objective.inputs(x, y, run.step, part)  # mixed, where the recipe mixes
        with accel.accumulate(run.model):
            logits = run.model(x)
            loss = run.objective.loss(logits, targets)
            accel.backward(loss)
            if accel.sync_gradients:  # the last micro-batch: the update (an optimizer steps only then under Accelerate)
                with run.signals.update() if run.signals else contextlib.nullcontext():  # done whole, or not begun
                    if r.grad_clip:
                        accel.clip_grad_norm_(run.model.parameters(), r.grad_clip)
                    for optimizer in run.optimizers:
                        optimizer.step()
                        optimizer.zero_grad(set_to_none=True)
                    for schedule in run.schedules:
                        schedule.step()
                    if run.ema is not None:
                        run.ema.update()
                    run.step += 1
        step_loss += loss.detach() / run.accum
        correct += (logits.argmax(1) == y).sum()
        seen += len(y)
    return accel.reduce(step_loss, "mean"), correct, seen


def train_step(run: Run, step: int) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Step ``step`` of the run: its micro-batches of the training data, then :func:`optimizer_step`."""
    return optimizer_step(run, micro_batches(run, step))


def evaluate(run: Run, split: str, views: bool = True) -> tuple[float, int]:
    """(accuracy, images) on ``split``, with the recipe's evaluation views (``views``) or the image alone.

    Each process scores its own disjoint share: the summed counts count every image exactly once.
    """
    accel = run.accelerator
    process = (accel.process_index, accel.num_processes)
    batch = devices.eval_batch(run.net.config, run.device)
    scored = dict(mirror=views and run.recipe.eval_flip, shift=run.recipe.eval_translate * views)
    run.net.eval()
    with torch.no_grad(), accel.autocast():
        correct, seen = count_share(run, split, process, batch, **scored)
    run.net.train()
    counts = accel.reduce(torch.tensor([correct, seen], device=run.device), "sum")
    return float(counts[0] / max(int(counts[1]), 1)), int(counts[1])


def stop(run: Run, signum: int, checkpointed: bool) -> None:
    """End the run at its current step, with a checkpoint to resume from."""
    if not checkpointed:
        save_checkpoint(run)
    again = ("run the same command without --fresh to resume (with --fresh it would start over)" if run.fresh
             else "run the same command to resume")
    raise RunStopped(f"stopped at step {run.step} of {run.total}; {again}", 128 + signum,
                     announce=run.accelerator.is_main_process)


def stop_at_once(run: Run) -> None:
    """A second Ctrl-C: keep the last finished step (``run.step``) in a checkpoint where one takes no longer than
    :data:`~mixer_ft.train.signals.SAVE_BOUND_S` (estimated from the checkpoints written, else from the state's
    size at 100 MB/s), then end; with several processes, end at once (a checkpoint needs them all).

    Raises:
        RunStopped: exit status 130, saying which step the same command resumes from.
    """
    last = run.checkpoints.all()
    kept = int(last[-1].name[5:13]) if last else 0
    state = sum(p.numel() * p.element_size() for p in run.net.parameters())
    seconds = run.checkpoint_s / max(kept // max(run.recipe.checkpoint_every, 1), 1) if kept else 3 * state / 100e6
    if run.step > kept and run.accelerator.num_processes == 1 and seconds <= SAVE_BOUND_S:
        save_checkpoint(run)
        kept = run.step
        said = f"stopped at once at step {run.step} of {run.total}, its checkpoint written"
    elif run.step > kept:
        why = "a checkpoint needs every process" if run.accelerator.num_processes > 1 else \
            f"a checkpoint would take about {seconds:.0f} s, more than the {SAVE_BOUND_S:.0f} s a second Ctrl-C waits"
        said = f"stopped at once at step {run.step} of {run.total}, not saved ({why})"
    else:
        said = f"stopped at once at step {run.step} of {run.total}, which its checkpoint holds"
    where = f"resumes from step {kept}" if kept else "starts over (no checkpoint was written)"
    raise RunStopped(f"{said}; the same command {where}", 128 + signal.SIGINT,
                     announce=run.accelerator.is_main_process)


# --------------------------------------------------------------------------- the end


def final_weights(run: Run) -> tuple[dict[str, torch.Tensor] | None, str]:
    """The weights a run scores and saves at its end, and which they are: the best on minival (early_stop), else the
    moving average (ema_decay), else the last step's (None: as they are)."""
    if run.best is not None and run.best.weights:
        return run.best.weights, f"best minival (step {run.best.step})"
    return (run.ema.tensors(), "moving average") if run.ema is not None else (None, "last step")


def finish(run: Run) -> dict[str, Any]:
    """Score minival and test, save the model and write the run record; returns the record."""
    weights, which = final_weights(run)
    with swapped(run.net, weights):
        return _finish(run, which)


def _finish(run: Run, which: str) -> dict[str, Any]:
    """:func:`finish` with the final weights in place (``which`` says which they are)."""
    from mixer_ft.data.sources import hub_dataset_id
    from mixer_ft.weights.model_folder import model_files, save_pretrained

    # What timm, transformers and `predict` compute from the saved model: the image alone. The recipe's
    # test-time views (eval_flip, eval_translate), where it has any, are scored too and recorded beside.
    minival, test = evaluate(run, "minival", views=False), evaluate(run, "test", views=False)
    if isinstance(run.data, StreamedSet):
        run.data.test_images = test[1]  # counted as it was read: what tells the data set it is (dataset_id)
    has_views = run.recipe.eval_flip or bool(run.recipe.eval_translate)
    with_views = (evaluate(run, "minival"), evaluate(run, "test")) if has_views else None
    run.history["minival"].append({"step": run.step, "accuracy": round((with_views or (minival,))[0][0], 5)})
    accel, record = run.accelerator, {}
    lost = data_loss(run)  # every process's part, gathered
    accel.wait_for_everyone()
    if accel.is_main_process:
        train, every = trainable(run.net)
        record = run_record(run, test, minival) | {"data_loss": lost, "weights": which,
                                                   "parameters": {"trained": train, "model": every}}
        if run.best is not None:
            record["early_stop"] = run.best.said()
        if with_views:
            record |= {"minival_accuracy_views": round(with_views[0][0], 5), "test_accuracy_views": round(with_views[1][0], 5)}
        provenance = {k: record[k] for k in ("name", "upstream", "dataset", "data_source", "test_accuracy", "test_images",
                                             "minival_accuracy", "minival_images", "steps", "global_batch",
                                             "git_commit", "finished", "test_accuracy_views") if k in record}
        provenance |= {"hub_dataset": hub_dataset_id(run.recipe.dataset), "val_fraction": run.recipe.val_fraction,
                       "seed": run.recipe.seed,
                       "test_fraction": run.recipe.test_fraction, "train_images": run.train_images,
                       "license": run.recipe.license}
        model = save_pretrained(saved_model(run.net), run.out / "model", classes=run.data.classes, evaluation=evaluation_views(run),
                                provenance=provenance)
        path = write_record(record_path(run.recipe), record)
        kept = atomic_write_text(run.out / "record.json", record_text(record))
        run.checkpoints.manifest.add(*model_files(model), kept, write_metrics(run.out, run.history))
        if run.recipe.method != "full":  # what the method trained, alone (methods.load_adapter)
            run.checkpoints.manifest.add(save_adapter(run.net, run.recipe, run.out / ADAPTER_NAME))
        views = f" (with the recipe's test-time views: {with_views[1][0]:.4f})" if with_views else ""
        scored = f"minival {minival[0]:.4f}" if minival[1] else "no minival images"  # 0 of 0 is not an accuracy
        accel.print(f"test accuracy {test[0]:.4f} ({test[1]} images){views}, {scored}; "
                    f"record {path}, model {run.out / 'model'}")
    if run.recipe.tracker:
        accel.end_training()
    accel.wait_for_everyone()
    return record


def finetune(recipe: Recipe, *, resume: bool = True) -> dict[str, Any]:
    """Run ``recipe`` to the end and return its run record (also written to results_dir).

    With ``resume``, a run whose output folder holds checkpoints continues from the newest.
    """
    preflight.check(recipe.upstream, recipe.variant, recipe.dataset, recipe.tracker)
    out = run_folder(recipe)
    for folder, what in ((out, "output folder"), (Path(recipe.results_dir), "results folder")):
        check_path(folder, what)
        check_outside_data(recipe.dataset, folder, what)
    made = [p for p in (out, Path(recipe.results_dir)) if not p.exists()]
    main = setting("RANK") == 0  # under torchrun; Accelerate is not set up yet
    try:
        with contextlib.ExitStack() as held:
            if main:  # one run at a time in a run folder; what a killed run half-wrote goes
                preflight.writable(out, "output folder")
                held.enter_context(locked(out / ".lock", wait=False, holder=f"pid {os.getpid()} on {platform.node()}"))
                sweep_partial_writes(out, out / "checkpoints", out / "model")
            return _run(recipe, resume)
    except BaseException:
        for folder in made:  # a run that never started leaves no empty folders behind
            if folder.is_dir() and not any(p.name != ".lock" for p in folder.iterdir()):
                shutil.rmtree(folder, ignore_errors=True)
        raise


def _run(recipe: Recipe, resume: bool) -> dict[str, Any]:
    """:func:`finetune` inside its run folder's lock."""
    run = setup(recipe, fresh=not resume)
    if resume:
        restore(run)
    check_record_is_ours(run)
    progress = Progress(recipe, run.accelerator, run.total, run.step, run.history,
                        compiled=devices.compile_mode(recipe, run.device) is not None, folder=run.out)
    if recipe.eval_every >= run.total and run.step == 0:
        run.accelerator.print(f"eval_every {recipe.eval_every:,} is not shorter than the run's {run.total:,} steps: "
                              "minival is scored at the end")
    run.model.train()
    try:
        with StopSignals(announce=run.accelerator.is_main_process) as signals:
            run.signals = signals
            try:
                _train(run, progress, signals)
            except KeyboardInterrupt:  # a second Ctrl-C: the weights are those of run.step, whole
                progress.bar.close()
                stop_at_once(run)
            finally:
                run.signals = None
        progress.bar.close()
        return finish(run)
    except RuntimeError as e:  # the device or host ran out of memory: one line, the checkpoints kept
        if not devices.out_of_memory(e):
            raise
        kept = run.checkpoints.all()
        where = f"step {run.step + 1}" if run.step < run.total else "the final evaluation"
        raise TrainingError(f"The run ran out of memory at {where} on the {run.device.type} (micro-batch {run.micro} of "
                            f"{run.micro * run.accum} images a process): set a smaller --micro-batch (a divisor of "
                            f"{run.micro * run.accum}; the same training) or a smaller model. "
                            + (f"Running again resumes from {kept[-1]}." if kept else "No checkpoint was written yet.")) \
            from None
    finally:
        if run.feed is not None:
            run.feed.close()


def _train(run: Run, progress: Progress, signals: StopSignals) -> None:
    """The steps from where the run stands to the end, with evaluations and checkpoints on their intervals.

    The host queues each step and moves on to the next (whose data the feed has ready) without
    waiting for the device, except where a value must be read: the first step of a (re)start (its
    compile time is kept apart), a log line, an evaluation, a checkpoint. Each wait is counted in
    the step where it happens, so a window's images/s covers all of its steps' device time.
    """
    r, losses = run.recipe, run.loss_check
    assert losses is not None, "setup() gives every run its loss check"
    start = run.step
    if run.best is not None and run.best.stopped_at:  # stopped early already: only the end is left
        return
    for step in range(start, run.total):
        t0 = time.perf_counter()
        loss, correct, images = train_step(run, step)  # run.step is step + 1 once its update is made
        losses.watch(loss, step)
        warmup = step == start
        evaluate_now = bool(r.eval_every) and run.step % r.eval_every == 0 and run.step < run.total
        checkpoint_now = bool(r.checkpoint_every and run.step % r.checkpoint_every == 0) or run.step == run.total
        if warmup or evaluate_now or checkpoint_now or progress.settle(run.step):
            devices.synchronize(run.device)
            losses.check(run.checkpoints, r.lr)
            if warmup and devices.compile_mode(r, run.device):
                devices.quiet_compiler()  # the step is compiled: nothing may compete with training for the CPU
        seconds = time.perf_counter() - t0
        run.elapsed += seconds
        run.warmup_s, run.warmup_steps = run.warmup_s + warmup * seconds, run.warmup_steps + warmup
        progress.step(run.step, run.lr, loss, correct, images, seconds, warmup)
        stop_early = False
        if evaluate_now:
            t0 = time.perf_counter()
            with swapped(run.net, run.ema and run.ema.tensors()):  # the weights the run would save
                accuracy, scored = evaluate(run, "minival")
                stop_early = run.best is not None and run.best.update(run.step, accuracy, trained(run.net))
            progress.minival(run.step, accuracy, scored)
            run.eval_s += time.perf_counter() - t0
        checkpoint_now = checkpoint_now or stop_early
        if checkpoint_now:
            t0 = time.perf_counter()
            save_checkpoint(run)  # always at the end: running the finished run again only re-evaluates
            run.checkpoint_s += time.perf_counter() - t0
        if stop_early:
            progress.last(run.step, run.lr)
            progress.bar.close()
            run.accelerator.print(f"early stop at step {run.step}: minival has not beaten {run.best.accuracy:.4f} (step "
                                  f"{run.best.step}) in {run.best.patience} evaluations; the model is step "
                                  f"{run.best.step}'s")
            return
        if (signum := signals.requested(run.accelerator)) and run.step < run.total:
            progress.bar.close()
            stop(run, signum, checkpointed=checkpoint_now)


__all__ = ["Run", "evaluate", "finetune", "restore", "save_checkpoint", "setup",
           "train_step"]
