"""The fine-tune loop on Accelerate: prepare, backward, reduce metrics; nothing clever.

One optimizer step consumes one global batch. Its images, crop boxes and flips are fixed by
(seed, step) alone, and each process takes every P-th of them, split into micro-batches that
Accelerate accumulates: so 1 or N processes, with or without accumulation, train on the same
images with the same augmentation, and a resumed run repeats the uninterrupted one exactly.
"""

from __future__ import annotations

import json
import logging
import math
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from mixer_ft.atomic import atomic_write, atomic_write_text
from mixer_ft.data import load_data
from mixer_ft.errors import ConfigError, MixerFtError
from mixer_ft.model import MixerConfig, MlpMixer
from mixer_ft.preprocess import Preprocess, batch_seed, iterate_batches
from mixer_ft.recipe import Recipe
from mixer_ft.records import git_commit, hardware, versions, write_record

log = logging.getLogger(__name__)

# Fields that define the optimisation; a checkpoint resumes only under the same values.
_RESUME_FIELDS = ("upstream", "model", "dataset", "architecture", "val_fraction", "steps", "epochs",
                  "global_batch", "optimizer", "lr", "momentum", "weight_decay", "warmup_steps", "grad_clip",
                  "label_smoothing", "crop_area_min", "translate", "seed")
EVAL_BATCH = 256


class TrainingError(MixerFtError):
    """A run that cannot go on (diverged, or a checkpoint that does not match the recipe)."""


def _same(key: str, saved: Any, now: Any) -> bool:
    """Whether a checkpoint's recipe value is the run's; a local data set may be named by another path."""
    if saved == now:
        return True
    # The same folder or archive named relative to another working directory, or through a link.
    return key == "dataset" and Path(saved).exists() and Path(now).exists() and Path(saved).samefile(now)


def build_model(recipe: Recipe, num_classes: int) -> MlpMixer:
    """The recipe's model with a fresh zero head for ``num_classes``."""
    from mixer_ft.weights import create_model

    arch = dict(recipe.architecture)
    if recipe.model == "custom":
        return MlpMixer(MixerConfig.from_dict({**arch, "num_classes": num_classes}))
    if recipe.upstream == "none":
        return create_model(recipe.model, num_classes=num_classes, **arch)
    return create_model(recipe.model, pretrained=recipe.upstream, num_classes=num_classes, **arch)


def make_optimizers(recipe: Recipe, model: MlpMixer, fused: bool = False) -> list[torch.optim.Optimizer]:
    """The recipe's optimizer(s): weight decay on weight matrices only, never on biases or norms.

    ``muon`` orthogonalises the updates of the blocks' weight matrices (torch's Muon, its step
    scaled to AdamW's size so the two share lr and weight decay) and leaves the rest to AdamW:
    the patch stem and the head, as Muon's authors advise, and the biases and norm gains.
    """
    named = list(model.named_parameters())
    muon = [p for n, p in named if n.startswith("blocks.") and p.ndim == 2] if recipe.optimizer == "muon" else []
    taken = {id(p) for p in muon}
    decay = [p for _, p in named if p.ndim >= 2 and id(p) not in taken]
    no_decay = [p for _, p in named if p.ndim < 2]
    groups = [{"params": decay, "weight_decay": recipe.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    # fused: one kernel for the whole update instead of a handful of passes over the parameters.
    if recipe.optimizer == "sgd":
        return [torch.optim.SGD(groups, lr=recipe.lr, momentum=recipe.momentum, nesterov=False, fused=fused)]
    opts: list[torch.optim.Optimizer] = [torch.optim.AdamW(groups, lr=recipe.lr, fused=fused)]
    if muon:
        opts.insert(0, torch.optim.Muon(muon, lr=recipe.lr, weight_decay=recipe.weight_decay,
                                        momentum=recipe.momentum, adjust_lr_fn="match_rms_adamw"))
    return opts


def predict(model: torch.nn.Module, images: torch.Tensor, mirror: bool = False, shift: int = 0) -> torch.Tensor:
    """Predicted classes of a preprocessed NCHW batch, from the summed logits of its views.

    The views: the image; with ``shift``, two copies moved ``shift`` pixels diagonally (towards
    the top left and the bottom right, the border repeated as ``translate`` does in training);
    with ``mirror``, the left-right mirror of each of these.
    """
    views = [images]
    if shift:
        h, w = images.shape[-2:]
        padded = F.pad(images, (shift, shift, shift, shift), mode="replicate")
        views += [padded[..., 2 * shift:2 * shift + h, 2 * shift:2 * shift + w], padded[..., :h, :w]]
    if mirror:
        views += [v.flip(3) for v in views]
    logits = model(views[0]).float()
    for view in views[1:]:  # one view at a time: evaluation memory stays that of one batch
        logits = logits + model(view).float()
    return logits.argmax(1)


def lr_factor(step: int, warmup: int, total: int) -> float:
    """vit_jax's schedule at (1-based) ``step``: linear warm-up, then cosine to 0."""
    progress = min(max((step - warmup) / max(total - warmup, 1), 0.0), 1.0)
    factor = 0.5 * (1.0 + math.cos(math.pi * progress))
    return factor * min(1.0, step / warmup) if warmup else factor


def _writable(folder: Path, what: str) -> None:
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / ".write_test"
        probe.write_text("")
        probe.unlink()
    except OSError as e:
        raise ConfigError(f"Cannot write to the {what} {folder} ({e.strerror or e}). Choose another folder.") from None


def _micro_batch(recipe: Recipe, per_process: int, model: torch.nn.Module, device: torch.device) -> int:
    """The per-process forward-pass size. "auto" probes the largest that fits a CUDA device."""
    if recipe.micro_batch is None:
        return per_process
    if recipe.micro_batch != "auto":
        return int(recipe.micro_batch)
    if device.type != "cuda":
        return per_process  # host memory, not the batch, bounds a CPU run
    size = model.config.img_size
    candidates = [d for d in range(per_process, 0, -1) if per_process % d == 0]
    for m in candidates:
        try:
            x = torch.zeros(m, 3, size, size, device=device)
            with torch.autocast("cuda", dtype=torch.bfloat16):
                model.to(device)(x).float().sum().backward()
            model.zero_grad(set_to_none=True)
            return m
        except torch.cuda.OutOfMemoryError:
            model.zero_grad(set_to_none=True)
            torch.cuda.empty_cache()
    raise ConfigError("Not even a micro-batch of 1 fits this device's memory.")


class Checkpoints:
    """Atomic training checkpoints in <output>/checkpoints, newest first on resume."""

    keep = 2

    def __init__(self, folder: Path) -> None:
        self.folder = folder / "checkpoints"

    def save(self, state: dict[str, Any]) -> Path:
        path = atomic_write(self.folder / f"step_{state['step']:08d}.pt", lambda tmp: torch.save(state, tmp))
        for old in sorted(self.folder.glob("step_*.pt"))[: -self.keep]:
            old.unlink()
        return path

    def latest(self) -> dict[str, Any] | None:
        for path in sorted(self.folder.glob("step_*.pt"), reverse=True):
            try:
                return torch.load(path, map_location="cpu", weights_only=True)
            except Exception as e:  # noqa: BLE001 - damaged by something outside us: try the older one
                log.warning("checkpoint %s is unreadable (%s); trying an older one", path, e)
        return None


def finetune(recipe: Recipe, *, resume: bool = True) -> dict[str, Any]:
    """Run ``recipe`` to the end and return its run record (also written to results_dir).

    With ``resume``, a run whose output folder holds checkpoints continues from the newest.
    """
    from accelerate import Accelerator, PartialState
    from accelerate.utils import is_mps_available, is_xpu_available, parse_flag_from_env

    # With no accelerator, processes started by `accelerate launch` (torchrun) talk over gloo on
    # the CPU; Accelerate only does that when told the run is a CPU run.
    use_cpu = parse_flag_from_env("ACCELERATE_USE_CPU") or not (
        torch.cuda.is_available() or is_mps_available() or is_xpu_available())
    state = PartialState(cpu=use_cpu)
    if recipe.tracker == "tensorboard":
        import importlib.util

        if not (importlib.util.find_spec("tensorboard") or importlib.util.find_spec("tensorboardX")):
            raise ConfigError("tracker = \"tensorboard\" needs TensorBoard: pip install 'mixer_ft[tensorboard]'.")
    out = Path(recipe.output_dir or Path("runs") / recipe.run_name)
    if state.is_main_process:
        _writable(out, "output folder")
        _writable(Path(recipe.results_dir), "results folder")
    P, rank = state.num_processes, state.process_index
    if recipe.global_batch % P:
        raise ConfigError(f"global batch {recipe.global_batch} cannot be split over {P} processes; "
                          f"use a multiple of {P}.")
    per_process = recipe.global_batch // P

    with state.main_process_first():  # one process decodes into the cache, the others read it
        data = load_data(recipe.dataset, image_column=recipe.image_column, label_column=recipe.label_column)
    splits = data.splits(recipe.val_fraction, recipe.seed)
    train_idx = splits["train"][1]
    steps_per_epoch = len(train_idx) // recipe.global_batch
    if steps_per_epoch == 0:
        raise ConfigError(f"global batch {recipe.global_batch} is larger than the {len(train_idx)} training "
                          "images; lower it.")
    total = math.ceil(recipe.epochs * steps_per_epoch) if recipe.epochs else recipe.steps

    torch.manual_seed(recipe.seed)  # the same initial weights on every process
    model = build_model(recipe, len(data.classes))
    device = state.device
    micro = _micro_batch(recipe, per_process, model, device)
    if per_process % micro:
        raise ConfigError(f"micro-batch {micro} does not divide the {per_process} images each of the {P} "
                          f"process(es) takes from a global batch of {recipe.global_batch}; use a divisor.")
    accum = per_process // micro
    precision = recipe.mixed_precision
    if precision == "auto":
        precision = "bf16" if device.type == "cuda" and torch.cuda.is_bf16_supported() else "no"
    model.set_fast_path(recipe.fast_path)
    # Compilation pays on a GPU; on a CPU its start-up outweighs a short run's gain.
    compile_ = recipe.fast_path and device.type == "cuda"
    accelerator = Accelerator(mixed_precision=precision, gradient_accumulation_steps=accum,
                              log_with=recipe.tracker, project_dir=str(out), cpu=use_cpu,
                              dynamo_backend="inductor" if compile_ else "no")

    raw_opts = make_optimizers(recipe, model, fused=recipe.fast_path and device.type in ("cpu", "cuda"))
    schedules = [torch.optim.lr_scheduler.LambdaLR(o, lambda s: lr_factor(s + 1, recipe.warmup_steps, total))
                 for o in raw_opts]
    model, *optimizers = accelerator.prepare(model, *raw_opts)
    net: MlpMixer = accelerator.unwrap_model(model)
    pre = Preprocess.for_model(net.config, recipe.crop_area_min, recipe.translate)

    ckpts = Checkpoints(out)
    if not resume and accelerator.is_main_process and ckpts.folder.exists():
        shutil.rmtree(ckpts.folder)  # starting over: an old run's later steps must not be resumed
    accelerator.wait_for_everyone()
    start, history, elapsed = 0, {"loss": [], "minival": []}, 0.0
    saved = ckpts.latest() if resume else None
    if saved is not None:
        if "optimizers" not in saved:
            raise TrainingError(f"{out} holds a checkpoint from an older mixer_ft that this one cannot resume. "
                                "Use another --output-dir, or --fresh to start over.")
        differ = [k for k in _RESUME_FIELDS if not _same(k, saved["recipe"].get(k), getattr(recipe, k))]
        if differ:
            raise TrainingError(
                f"{out} holds a checkpoint of another recipe (different {', '.join(differ)}). Use another "
                "--output-dir, or delete its checkpoints folder to start over."
            )
        net.load_state_dict(saved["model"])
        for optimizer, schedule, o_state, s_state in zip(optimizers, schedules, saved["optimizers"],
                                                         saved["schedules"], strict=True):
            optimizer.load_state_dict(o_state)
            schedule.load_state_dict(s_state)
        torch.set_rng_state(saved["torch_rng"])
        start, history, elapsed = saved["step"], json.loads(saved["history"]), saved["elapsed_s"]
        accelerator.print(f"resuming {out} at step {start}/{total}")

    def evaluate(split: str) -> tuple[float, int]:
        array, idx = splits[split]
        correct, seen = 0, 0
        net.eval()
        with torch.no_grad(), accelerator.autocast():
            for _, x, y in iterate_batches(data.images[array], data.labels[array], idx[rank::P], EVAL_BATCH,
                                           shuffle=False):
                pred = predict(net, pre.eval(x.to(device)), mirror=recipe.eval_flip, shift=recipe.eval_translate)
                correct += int((pred.cpu() == y).sum())
                seen += len(y)
        net.train()
        # Each process scored its own disjoint share: the sums count every image exactly once.
        total_counts = accelerator.reduce(torch.tensor([correct, seen], device=device), "sum")
        return float(total_counts[0] / max(int(total_counts[1]), 1)), int(total_counts[1])

    def checkpoint(step: int) -> None:
        accelerator.wait_for_everyone()
        if accelerator.is_main_process:
            ckpts.save({
                "step": step, "model": net.state_dict(), "optimizers": [o.state_dict() for o in optimizers],
                "schedules": [s.state_dict() for s in schedules], "torch_rng": torch.get_rng_state(),
                "data_position": {"epoch": step // steps_per_epoch, "batch": step % steps_per_epoch},
                "recipe": recipe.to_dict(), "history": json.dumps(history), "elapsed_s": elapsed,
            })
        accelerator.wait_for_everyone()

    if recipe.tracker:
        flat = {k: (v if isinstance(v, (int, float, str, bool)) else str(v)) for k, v in recipe.to_dict().items()}
        accelerator.init_trackers(recipe.run_name, config=flat)
    from tqdm.auto import tqdm

    bar = tqdm(total=total, initial=start, disable=not accelerator.is_local_main_process, desc=recipe.run_name,
               unit="step", dynamic_ncols=True)
    train_images, train_labels = data.images["train"], data.labels["train"]
    height, width = data.image_size
    order_epoch, order = -1, train_idx
    model.train()
    window = torch.zeros(4, device=device)  # loss sum, steps, correct, images since the last log line
    window_s = 0.0
    for step in range(start, total):
        t0 = time.perf_counter()
        epoch, b = divmod(step, steps_per_epoch)
        if epoch != order_epoch:
            order = train_idx[np.random.default_rng((recipe.seed, epoch)).permutation(len(train_idx))]
            order_epoch = epoch
        batch = order[b * recipe.global_batch:(b + 1) * recipe.global_batch]
        gen = torch.Generator().manual_seed(batch_seed(recipe.seed, epoch, b))
        boxes, flips = pre.sample(len(batch), height, width, gen)
        batch, boxes, flips = batch[rank::P], boxes[rank::P], flips[rank::P]
        step_loss, correct = torch.zeros((), device=device), torch.zeros((), device=device)
        for a in range(accum):
            sl = slice(a * micro, (a + 1) * micro)
            x = torch.from_numpy(np.ascontiguousarray(train_images[batch[sl]])).to(device, non_blocking=True)
            y = torch.from_numpy(train_labels[batch[sl]]).to(device, non_blocking=True)
            with accelerator.accumulate(model):
                logits = model(pre.train(x, boxes[sl], flips[sl]))
                loss = F.cross_entropy(logits.float(), y, label_smoothing=recipe.label_smoothing)
                accelerator.backward(loss)
                if accelerator.sync_gradients and recipe.grad_clip:
                    accelerator.clip_grad_norm_(model.parameters(), recipe.grad_clip)
                for optimizer in optimizers:
                    optimizer.step()
                    optimizer.zero_grad(set_to_none=True)
            step_loss += loss.detach() / accum
            correct += (logits.argmax(1) == y).sum()
        for schedule in schedules:
            schedule.step()
        mean_loss = accelerator.reduce(step_loss, "mean")
        if not torch.isfinite(mean_loss):
            last = sorted(ckpts.folder.glob("step_*.pt"))
            kept = f"The last good checkpoint is kept: {last[-1]}." if last else "No checkpoint was written yet."
            raise TrainingError(
                f"The loss became {mean_loss.item()} at step {step + 1}: training diverged. {kept} Lower the "
                f"learning rate (now {recipe.lr}) or check the data; running again resumes from that checkpoint."
            )
        step_s = time.perf_counter() - t0
        elapsed += step_s
        window_s += step_s
        window += torch.stack([mean_loss, torch.ones((), device=device), correct.float(),
                               torch.tensor(float(len(batch)), device=device)])
        done = step + 1
        if done % recipe.log_every == 0 or done == total:
            w = accelerator.reduce(window, "sum")
            entry = {"step": done, "loss": round(float(w[0] / w[1]), 5), "train_accuracy": round(float(w[2] / w[3]), 5),
                     "lr": schedules[0].get_last_lr()[0], "images_per_s": round(float(w[3]) / max(window_s, 1e-9), 1)}
            history["loss"].append(entry)
            bar.set_postfix(loss=f"{entry['loss']:.4f}", acc=f"{entry['train_accuracy']:.3f}",
                            img_s=f"{entry['images_per_s']:.0f}")
            if recipe.tracker:
                accelerator.log({f"train/{k}": v for k, v in entry.items() if k != "step"}, step=done)
            window.zero_()
            window_s = 0.0
        bar.update(1)
        if recipe.eval_every and done % recipe.eval_every == 0 and done < total:
            acc, _ = evaluate("minival")
            history["minival"].append({"step": done, "accuracy": round(acc, 5)})
            if accelerator.is_main_process:
                bar.write(f"step {done}: minival accuracy {acc:.4f}")
            if recipe.tracker:
                accelerator.log({"minival/accuracy": acc}, step=done)
        if (recipe.checkpoint_every and done % recipe.checkpoint_every == 0) or done == total:
            checkpoint(done)  # always at the end: running the finished run again only re-evaluates
    bar.close()
    minival, n_minival = evaluate("minival")
    test, n_test = evaluate("test")
    history["minival"].append({"step": total, "accuracy": round(minival, 5)})
    record = None
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        from mixer_ft.weights import save_pretrained

        save_pretrained(net, out / "model")
        trained = total * recipe.global_batch
        record = {
            "name": recipe.run_name,
            "upstream": recipe.upstream, "model": recipe.model if recipe.model != "custom" else "custom",
            "dataset": data.dataset_id, "data_source": recipe.dataset, "data_location": data.location,
            "classes": data.classes,
            "test_accuracy": round(test, 5), "test_images": n_test,
            "minival_accuracy": round(minival, 5), "minival_images": n_minival,
            "steps": total, "global_batch": recipe.global_batch, "epochs": round(trained / len(train_idx), 3),
            "micro_batch": micro, "accumulation": accum, "mixed_precision": precision,
            "wall_clock_s": round(elapsed, 1), "images_per_s": round(trained / max(elapsed, 1e-9), 1),
            "hardware": hardware(device, P), "versions": versions(), "git_commit": git_commit(),
            "config": recipe.to_dict(), "model_config": net.config.to_dict(),
            "model_dir": str(out / "model"), "history": history,
            "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }
        path = write_record(recipe.results_dir, record)
        atomic_write_text(out / "record.json", json.dumps(record, indent=2) + "\n")
        accelerator.print(f"test accuracy {test:.4f} ({n_test} images), minival {minival:.4f}; "
                          f"record {path}, model {out / 'model'}")
    if recipe.tracker:
        accelerator.end_training()
    accelerator.wait_for_everyone()
    return record or {}


__all__ = ["Checkpoints", "TrainingError", "build_model", "finetune", "lr_factor"]
