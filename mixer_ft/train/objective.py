"""What a training step minimises: cross-entropy on the labels (the upstream protocol), or on mixed images and
labels (recipe keys ``mixup``, ``cutmix``), with classes weighted (``class_weights``) where the recipe says.

Mixing follows timm's ``Mixup`` in its default ``batch`` mode: each micro-batch draws whether it mixes at all
(``mix_prob`` 1), then mixup or cutmix (even odds when both alphas are set), then lambda from Beta(alpha,
alpha); every image is paired with the batch reversed. Cutmix pastes the reversed batch's box and corrects
lambda to the box's true share, and the targets are the two labels' (label-smoothed) one-hots in those shares.
The draws are those of a numpy ``RandomState`` seeded by (seed, step, process, micro-batch), so a resumed
run mixes exactly as the uninterrupted one; timm draws from numpy's global one in the same order, which is
how the tests check each number against timm's.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F


def balanced_weights(counts: Sequence[int]) -> list[float]:
    """scikit-learn's ``class_weight="balanced"``: n / (classes * n_c), so each class weighs the same in total
    (a class absent from the training split gets the weight of a class of one image)."""
    n, k = sum(counts), len(counts)
    return [n / (k * max(c, 1)) for c in counts]


def cutmix_box(shape: tuple[int, ...], lam: float, rng: np.random.RandomState) -> tuple[tuple[int, int, int, int], float]:
    """timm's ``rand_bbox`` and its corrected lambda: a box of side sqrt(1 - lam) of the image's, centred at
    random and clipped to the image; lambda is then 1 - the box's share. Returns ((y0, y1, x0, x1), lambda)."""
    h, w = shape[-2:]
    ratio = np.sqrt(1 - lam)
    cut_h, cut_w = int(h * ratio), int(w * ratio)
    cy, cx = rng.randint(0, h), rng.randint(0, w)
    y0, y1 = np.clip(cy - cut_h // 2, 0, h), np.clip(cy + (cut_h + 1) // 2, 0, h)
    x0, x1 = np.clip(cx - cut_w // 2, 0, w), np.clip(cx + (cut_w + 1) // 2, 0, w)
    return (int(y0), int(y1), int(x0), int(x1)), 1.0 - float((y1 - y0) * (x1 - x0)) / float(h * w)


def soft_targets(labels: torch.Tensor, classes: int, lam: float, smoothing: float) -> torch.Tensor:
    """timm's ``mixup_target``: label-smoothed one-hots of the labels and of the labels reversed, in lam : 1 - lam."""
    off = smoothing / classes
    on = 1.0 - smoothing + off
    one = torch.full((len(labels), classes), off, device=labels.device).scatter_(1, labels.long()[:, None], on)
    return one * lam + one.flip(0) * (1.0 - lam)


class Objective:
    """The loss of one micro-batch, its images mixed first where the recipe says."""

    def __init__(self, classes: int, *, seed: int, label_smoothing: float = 0.0, mixup: float = 0.0,
                 cutmix: float = 0.0, weights: Sequence[float] | None = None, process: int = 0,
                 device: torch.device | None = None) -> None:
        self.classes, self.seed, self.smoothing, self.process = classes, seed, label_smoothing, process
        self.mixup, self.cutmix = mixup, cutmix
        self.weight = None if weights is None else torch.tensor(list(weights), dtype=torch.float32, device=device)

    def draw(self, rng: np.random.RandomState) -> tuple[float, bool]:
        """timm's ``Mixup._params_per_batch`` with mix_prob 1 and switch_prob 0.5: (lambda, cutmix or not)."""
        rng.rand()  # timm's draw against mix_prob (1.0): drawn, so the numbers after it are timm's
        if self.mixup > 0 and self.cutmix > 0:
            use_cutmix = bool(rng.rand() < 0.5)
            alpha = self.cutmix if use_cutmix else self.mixup
        else:
            use_cutmix, alpha = self.cutmix > 0, self.cutmix or self.mixup
        return float(rng.beta(alpha, alpha)), use_cutmix

    def mix(self, x: torch.Tensor, y: torch.Tensor, rng: np.random.RandomState) -> tuple[torch.Tensor, torch.Tensor]:
        """(mixed images, soft targets) for one micro-batch, as timm's ``Mixup(x, y)``."""
        lam, use_cutmix = self.draw(rng)
        if use_cutmix:
            (y0, y1, x0, x1), lam = cutmix_box(tuple(x.shape), lam, rng)
            x = x.clone()
            x[:, :, y0:y1, x0:x1] = x.flip(0)[:, :, y0:y1, x0:x1]
        else:
            x = x * lam + x.flip(0) * (1.0 - lam)
        return x, soft_targets(y, self.classes, lam, self.smoothing).to(x.device)

    def inputs(self, x: torch.Tensor, y: torch.Tensor, step: int, part: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The micro-batch ``part`` of step ``step`` as the model sees it, and its targets (labels, unless mixed)."""
        if not (self.mixup or self.cutmix):
            return x, y
        entropy = np.random.SeedSequence([self.seed, step, self.process, part, 0x4D6978]).generate_state(1)[0]
        return self.mix(x, y, np.random.RandomState(int(entropy)))

    def loss(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Cross-entropy in float32; with mixed targets, label smoothing is already in them."""
        smoothing = 0.0 if targets.is_floating_point() else self.smoothing
        return F.cross_entropy(logits.float(), targets, weight=self.weight, label_smoothing=smoothing)


__all__ = ["Objective", "balanced_weights", "cutmix_box", "soft_targets"]
