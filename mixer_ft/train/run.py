"""What the steps of one fine-tune run share: :class:`Run`, built by :func:`mixer_ft.train.loop.setup`, and the
loss watch every step reports to."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from mixer_ft.data.cache import ImageData
from mixer_ft.data.preprocess import Preprocess
from mixer_ft.data.stream import StreamedSet
from mixer_ft.errors import TrainingError
from mixer_ft.model.mixer import MlpMixer
from mixer_ft.train.checkpoints import Checkpoints
from mixer_ft.train.feed import Feed
from mixer_ft.train.recipe import Recipe


class NonFinite:
    """Watches the loss for a non-finite value without waiting for the device.

    Reading the loss every step would make the host wait for each step before it may queue the
    next, leaving the GPU idle between steps. The first bad step is kept on the device instead,
    and :meth:`check` reads it where the loop waits anyway (a log line, an evaluation) and before
    any checkpoint is written, so no checkpoint ever holds the weights of a diverged step.
    """

    def __init__(self, device: torch.device) -> None:
        self.first = torch.full((), -1, dtype=torch.long, device=device)  # step number of the first bad loss
        self.value = torch.zeros((), device=device)

    def watch(self, loss: torch.Tensor, step: int) -> None:
        """Note ``loss`` of step ``step`` (queued on the device, no wait)."""
        new = ~torch.isfinite(loss) & (self.first < 0)
        self.first = torch.where(new, step + 1, self.first)
        self.value = torch.where(new, loss.detach().float(), self.value)

    def check(self, checkpoints: Checkpoints, lr: float) -> None:
        """End the run if a loss so far was not finite; the last good checkpoint stays for a resume.

        Raises:
            TrainingError: the step and the value, and what to change (``lr``: the recipe's).
        """
        step = int(self.first)
        if step < 0:
            return
        last = checkpoints.all()
        kept = f"The last good checkpoint is kept: {last[-1]}." if last else "No checkpoint was written yet."
        raise TrainingError(
            f"The loss became {float(self.value)} at step {step}: training diverged. {kept} Lower the "
            f"learning rate (now {lr}) or check the data; running again resumes from that checkpoint."
        )


@dataclass
class Run:
    """What the steps of one fine-tune run share. Built by :func:`setup`."""

    recipe: Recipe
    accelerator: Any  # accelerate.Accelerator
    out: Path
    data: ImageData | StreamedSet
    splits: dict[str, Any]  # split -> (array, indices) of the cache; of a streamed set, its shards
    model: torch.nn.Module  # as prepared by Accelerate (wrapped under DDP): train through it
    net: MlpMixer  # the bare model: state dicts and evaluation
    optimizers: list[torch.optim.Optimizer]
    schedules: list[torch.optim.lr_scheduler.LambdaLR]
    pre: Preprocess
    checkpoints: Checkpoints
    total: int  # optimizer steps
    steps_per_epoch: int
    micro: int  # images per forward pass and process
    accum: int  # forward passes per step and process
    precision: str
    head: str = ""  # how the model's head was made, and why (see head_choice)
    run_id: str = field(default_factory=lambda: uuid.uuid4().hex[:12])  # kept across resumes; records carry it
    step: int = 0  # steps done
    lr: float = 0.0  # the learning rate the last step used (its first optimizer's)
    elapsed: float = 0.0  # seconds spent in training steps, over every part of a resumed run
    # The first step of each (re)start compiles, autotunes kernels and first touches the data (38 s
    # of a 51 s run on an H200): kept apart, so that images/s is the rate a long run goes at.
    warmup_s: float = 0.0
    warmup_steps: int = 0
    eval_s: float = 0.0  # seconds in minival evaluations during training, and in checkpoint writes
    checkpoint_s: float = 0.0
    history: dict[str, list] = field(default_factory=lambda: {"loss": [], "minival": []})
    feed: Feed | None = None  # each step's data, prepared ahead (see mixer_ft.train.feed)
    fresh: bool = False  # started with --fresh (a stop says how to resume without starting over again)
    loss_check: NonFinite | None = None
    threads: dict[str, Any] | None = None  # on a CPU: torch's threads, why that many, how they wait
    objective: Any = None  # the loss of a micro-batch, its images mixed where the recipe says (train/objective.py)
    ema: Any = None  # the moving average of the weights, where the recipe keeps one (train/averaging.py)
    best: Any = None  # the best minival so far, where the recipe stops early (train/averaging.py)
    signals: Any = None  # the run's StopSignals while it trains: a step's update is finished before a second Ctrl-C

    @property
    def device(self) -> torch.device:
        return self.accelerator.device

    @property
    def train_images(self) -> int | None:
        """Images in the train split; None for a streamed set (not counted before it is read)."""
        train = self.splits["train"]
        return len(train[1]) if isinstance(train, tuple) else None


__all__ = ["NonFinite", "Run"]
