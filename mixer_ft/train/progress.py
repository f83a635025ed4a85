"""What a run shows while it trains: the progress bar, a loss line in the history every
``log_every`` steps (loss, accuracy, the learning rate the step used, images/s), minival, the tracker."""

from __future__ import annotations

import sys
import time
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from mixer_ft.train.loop import Run


class Progress:
    """The progress bar, a loss line in the history every ``log_every`` steps, and the tracker."""

    def __init__(self, run: Run) -> None:
        from tqdm.auto import tqdm

        self.run, r = run, run.recipe
        if r.tracker:
            flat = {k: (v if isinstance(v, (int, float, str, bool)) else str(v)) for k, v in r.to_dict().items()}
            run.accelerator.init_trackers(r.run_name, config=flat)
        # A bar on a terminal; in a log or a pipe, where a bar is noise, the history's lines instead.
        self.lines = run.accelerator.is_local_main_process and not sys.stderr.isatty()
        self.bar = tqdm(total=run.total, initial=run.step, disable=not run.accelerator.is_local_main_process
                        or self.lines, desc=r.run_name, unit="step", dynamic_ncols=True)
        # The window since the last line: loss sum and correct count stay on the device (adding to them
        # queues a kernel, reading them would wait for the step); steps, images and seconds are counted here.
        self.window = torch.zeros(2, device=run.device)
        self.steps = self.images = self.timed_images = 0
        self.window_s = 0.0

    def due(self) -> bool:
        """Whether the step just done ends a window (a line in the history): the loop settles the device first."""
        done = self.run.step
        return done % self.run.recipe.log_every == 0 or done == self.run.total

    def step(self, loss: torch.Tensor, correct: torch.Tensor, images: int, seconds: float, warmup: bool) -> None:
        run, done = self.run, self.run.step
        self.window_s += 0.0 if warmup else seconds
        self.window[0] += loss.detach()
        self.window[1] += correct
        self.steps, self.images = self.steps + 1, self.images + images
        self.timed_images += 0 if warmup else images
        if self.due():
            counts = torch.tensor([self.steps, self.images, self.timed_images], device=run.device, dtype=torch.float32)
            w = run.accelerator.reduce(torch.cat([self.window, counts]), "sum").tolist()
            rate = round(w[4] / self.window_s, 1) if self.window_s > 0 else None
            entry = {"step": done, "loss": round(w[0] / w[2], 5),  # (each step's loss is already the processes' mean)
                     "train_accuracy": round(w[1] / w[3], 5), "lr": run.lr, "images_per_s": rate,
                     "time": round(time.time(), 2)}  # when the window ended (Unix seconds), to line up with other logs
            if run.device.type == "cuda":  # the window's peak, so that a long run shows memory over time
                entry["peak_memory_bytes"] = torch.cuda.max_memory_allocated(run.device)
                torch.cuda.reset_peak_memory_stats(run.device)
            run.history["loss"].append(entry)
            if self.lines:
                print(f"{run.recipe.run_name}: step {done:,}/{run.total:,}  loss {entry['loss']:.4f}  "
                      f"acc {entry['train_accuracy']:.3f}  lr {entry['lr']:.3g}" + (f"  {rate:,.0f} img/s" if rate else ""),
                      file=sys.stderr, flush=True)
            self.bar.set_postfix(loss=f"{entry['loss']:.4f}", acc=f"{entry['train_accuracy']:.3f}",
                                 **({"img_s": f"{rate:.0f}"} if rate else {}))
            if run.recipe.tracker:
                run.accelerator.log({f"train/{k}": v for k, v in entry.items() if k != "step" and v is not None},
                                    step=done)
            self.window.zero_()
            self.steps = self.images = self.timed_images = 0
            self.window_s = 0.0
        self.bar.update(1)

    def minival(self, accuracy: float) -> None:
        run = self.run
        run.history["minival"].append({"step": run.step, "accuracy": round(accuracy, 5)})
        if run.accelerator.is_main_process:
            self.bar.write(f"step {run.step}: minival accuracy {accuracy:.4f}", file=sys.stderr if self.lines else None)
        if run.recipe.tracker:
            run.accelerator.log({"minival/accuracy": accuracy}, step=run.step)


__all__ = ["Progress"]
