"""What a run shows while it trains: the progress bar, a loss line in the history every
``log_every`` steps (loss, accuracy, the learning rate the step used, images/s, the time left), minival, the
tracker, and ``metrics.csv`` in the run folder (:mod:`mixer_ft.train.metrics`)."""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from mixer_ft.train.recipe import Recipe


SMALLER = {"L/16": "B/16", "L/32": "B/32", "B/16": "S/32", "B/32": "S/32", "S/16": "S/32", "H/14": "B/16"}  # faster


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


class Progress:
    """The progress bar, a loss line in ``history`` every ``log_every`` steps, and the tracker.

    Args:
        recipe: the run's (name, tracker, log interval).
        accelerator: the run's Accelerator (processes, device, tracker).
        total, start: the run's steps, and the steps done when this (re)start began.
        history: the run's history, which this appends to (``loss`` and ``minival`` lists).
    """

    def __init__(self, recipe: Recipe, accelerator: Any, total: int, start: int, history: dict[str, list],
                 compiled: bool = False, folder: Path | None = None) -> None:
        from tqdm.auto import tqdm

        self.recipe, self.accelerator, self.total, self.history = recipe, accelerator, total, history
        self.device = accelerator.device
        if recipe.tracker:
            from mixer_ft.publish import published  # a tracker publishes what it is given: URLs filtered

            flat = {k: (v if isinstance(v, (int, float, str, bool)) else str(v))
                    for k, v in published(recipe.to_dict()).items()}
            accelerator.init_trackers(recipe.run_name, config=flat)
        # A bar on a terminal; in a log or a pipe, where a bar is noise, the history's lines instead.
        self.lines = accelerator.is_local_main_process and not sys.stderr.isatty()
        self.bar = tqdm(total=total, initial=start, disable=not accelerator.is_local_main_process or self.lines,
                        desc=recipe.run_name, unit="step", dynamic_ncols=True)
        # The window since the last line: loss sum and correct count stay on the device (adding to them
        # queues a kernel, reading them would wait for the step); steps, images and seconds are counted here.
        self.window = torch.zeros(2, device=self.device)
        self.steps = self.images = self.timed_images = 0
        self.window_s = 0.0
        # For the estimate of the time left: the (re)start's timed steps so far, and when to tell it. A compiled
        # step's first run compiles (minutes): the estimate waits for the next; an eager one's tells at once.
        self.start, self.timed, self.timed_s, self.told = start, 0, 0.0, False
        self.first_s, self.compiled = 0.0, compiled
        self.folder = folder if accelerator.is_main_process else None  # where metrics.csv goes (the main process's)
        self._listed = False  # metrics.csv in the run folder's manifest

    def due(self, done: int) -> bool:
        """Whether step ``done`` ends a window (a line in the history)."""
        return done % self.recipe.log_every == 0 or done == self.total

    def _estimating(self) -> bool:
        """Whether the steps so far can tell the time left: one timed step, or an eager run's first."""
        return self.timed >= 1 or (not self.compiled and self.first_s > 0)

    def settle(self, done: int) -> bool:
        """Whether the loop should wait for the device after step ``done``: a window ends, or the time left is told
        (after the first step an estimate can be made from, where the run has more steps)."""
        return self.due(done) or (not self.told and done < self.total and done in (self.start + 1, self.start + 2))

    def per_step(self) -> float | None:
        """Seconds a step takes, from this (re)start's timed steps (an eager run's first, until there is one)."""
        return self.timed_s / self.timed if self.timed else (self.first_s or None) if not self.compiled else None

    def _eta(self, done: int, images: int) -> None:
        """Tell once, as soon as a step tells it, how long the rest takes; on a CPU, over an hour, what would be
        faster (a model smaller than the one in use, fewer steps, a GPU). Each log line then tells it again."""
        self.told = True
        per_step = self.per_step() or 0.0
        left = (self.total - done) * per_step
        if not self.accelerator.is_main_process or not per_step:
            return
        steps = f"the {self.total - done:,} steps left take" if self.total - done > 1 else "the step left takes"
        print(f"{self.recipe.run_name}: {images / per_step:,.1f} images/s; {steps} about {_duration(left)}",
              file=sys.stderr, flush=True)
        if self.device.type == "cpu" and left > 3600:
            smaller = SMALLER.get(self.recipe.variant or "")
            faster = ([f"a smaller model (--model {smaller})"] if smaller else []) + ["fewer steps (--steps)", "a GPU"]
            print(f"{self.recipe.run_name}: that is long for a CPU: {', '.join(faster[:-1])} or {faster[-1]} shortens "
                  "it; Ctrl-C stops at a checkpoint and the same command resumes.", file=sys.stderr, flush=True)

    def step(self, done: int, lr: float, loss: torch.Tensor, correct: torch.Tensor, images: int, seconds: float,
             warmup: bool) -> None:
        """Count step ``done`` (its loss, correct count and images; ``lr``, the rate it used) in the window."""
        self.window_s += 0.0 if warmup else seconds
        if warmup:
            self.first_s = seconds
        else:
            self.timed, self.timed_s = self.timed + 1, self.timed_s + seconds
        self.window[0] += loss.detach()
        self.window[1] += correct
        self.steps, self.images = self.steps + 1, self.images + images
        self.timed_images += 0 if warmup else images
        if not self.told and self._estimating() and done < self.total:
            self._eta(done, images)
        if self.due(done):
            self._line(done, lr)
        self.bar.update(1)

    def last(self, done: int, lr: float) -> None:
        """The run ends early at step ``done`` (early_stop): the line of the steps not yet told, if there are any."""
        if self.steps:
            self._line(done, lr)

    def _line(self, done: int, lr: float) -> None:
        accel = self.accelerator
        counts = torch.tensor([self.steps, self.images, self.timed_images], device=self.device, dtype=torch.float32)
        w = accel.reduce(torch.cat([self.window, counts]), "sum").tolist()
        rate = round(w[4] / self.window_s, 1) if self.window_s > 0 else None
        entry = {"step": done, "loss": round(w[0] / w[2], 5),  # (each step's loss is already the processes' mean)
                 "train_accuracy": round(w[1] / w[3], 5), "lr": lr, "images_per_s": rate,
                 "time": round(time.time(), 2)}  # when the window ended (Unix seconds), to line up with other logs
        if self.device.type == "cuda":  # the window's peak, so that a long run shows memory over time
            entry["peak_memory_bytes"] = torch.cuda.max_memory_allocated(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
        self.history["loss"].append(entry)
        self.save()
        if self.lines:
            per_step = self.per_step()
            left = f"  {_duration((self.total - done) * per_step)} left" if per_step and done < self.total else ""
            print(f"{self.recipe.run_name}: step {done:,}/{self.total:,}  loss {entry['loss']:.4f}  "
                  f"acc {entry['train_accuracy']:.3f}  lr {entry['lr']:.3g}" + (f"  {rate:,.0f} img/s" if rate else "")
                  + left, file=sys.stderr, flush=True)
        self.bar.set_postfix(loss=f"{entry['loss']:.4f}", acc=f"{entry['train_accuracy']:.3f}",
                             **({"img_s": f"{rate:.0f}"} if rate else {}))
        if self.recipe.tracker:
            accel.log({f"train/{k}": v for k, v in entry.items() if k != "step" and v is not None}, step=done)
        self.window.zero_()
        self.steps = self.images = self.timed_images = 0
        self.window_s = 0.0

    def save(self) -> None:
        """Write the history so far to the run folder's metrics.csv (the main process; a file its manifest lists)."""
        if self.folder is None:
            return
        from mixer_ft.atomic import Manifest
        from mixer_ft.train.metrics import write_metrics

        path = write_metrics(self.folder, self.history)
        if not self._listed:
            Manifest(self.folder).add(path)
            self._listed = True

    def minival(self, done: int, accuracy: float, images: int) -> None:
        """A minival accuracy at step ``done`` over ``images``: in the history, on the terminal and in the tracker.
        A minival of no images (a small set; the run warned of it at the start) has no accuracy to show."""
        self.history["minival"].append({"step": done, "accuracy": round(accuracy, 5)})
        self.save()
        if not images:
            return
        if self.accelerator.is_main_process:
            self.bar.write(f"step {done}: minival accuracy {accuracy:.4f}", file=sys.stderr if self.lines else None)
        if self.recipe.tracker:
            self.accelerator.log({"minival/accuracy": accuracy}, step=done)


__all__ = ["Progress"]
