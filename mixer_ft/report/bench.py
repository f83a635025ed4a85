"""Training-step speed: our Mixer against timm's `MlpMixer`, measured in one run on one machine.

A step is forward, cross-entropy, backward and the protocol's optimizer step (SGD, momentum
0.9) on random data at the model's input size. Images/s is the median over timed steps after
warm-up, the two models' steps taken in alternation; both get the same variant, batch, input
size, precision and optimizer.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from mixer_ft.atomic import atomic_write_text, json_text
from mixer_ft.data.ticker import Ticker
from mixer_ft.errors import ConfigError
from mixer_ft.model.mixer import MixerConfig, MlpMixer, canonical_variant, timm_name
from mixer_ft.model.resolution import resized_config
from mixer_ft.train.hardware import hardware
from mixer_ft.train.recipe import COMPILE_MODES
from mixer_ft.train.records import versions

# Dense bf16 tensor-core peaks (FLOP/s) by device name, from the vendors' datasheets (SXM parts).
BF16_PEAK = {"H200": 989e12, "H100": 989e12, "A100": 312e12, "L40S": 362e12, "L4": 121e12, "A10G": 70e12,
             "4090": 165e12, "3090": 71e12}


def forward_flops(cfg: MixerConfig) -> float:
    """Multiply-adds x 2 of one image's forward pass (dense layers and the stem)."""
    s, c = cfg.num_tokens, cfg.hidden_dim
    stem = s * cfg.patch_size**2 * cfg.in_chans * c
    block = c * 2 * s * cfg.tokens_mlp_dim + s * 2 * c * cfg.channels_mlp_dim
    return 2.0 * (stem + cfg.num_blocks * block + c * cfg.num_classes)


def _peak(device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((v for k, v in BF16_PEAK.items() if k in name), None)


def _timm_model(variant: str, cfg: MixerConfig) -> torch.nn.Module:
    import timm

    ratios = (cfg.tokens_mlp_dim / cfg.hidden_dim, cfg.channels_mlp_dim / cfg.hidden_dim)  # a tiled model's too
    return timm.create_model(timm_name(variant), num_classes=cfg.num_classes, img_size=cfg.img_size, mlp_ratio=ratios)


class TrainStep:
    """One model's training step on fixed random data; calling it runs a step and returns its seconds."""

    def __init__(self, model: torch.nn.Module, batch: int, size: int, device: torch.device, bf16: bool,
                 compile_model: bool = False, fused: bool = False, compile_mode: str | None = None) -> None:
        self.device, self.bf16 = device, bf16
        self.model = model.to(device).train()
        self.opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9, fused=fused)
        self.run = torch.compile(model, mode=compile_mode) if compile_model else model
        self.x = torch.randn(batch, 3, size, size, device=device)
        self.y = torch.randint(0, 10, (batch,), device=device)

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def __call__(self) -> float:
        self._sync()
        t0 = time.perf_counter()
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.bf16):
            loss = F.cross_entropy(self.run(self.x).float(), self.y)
        loss.backward()
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        self._sync()
        return time.perf_counter() - t0


def _warm(make: Callable[[], TrainStep], warmup: int, device: torch.device) -> tuple[TrainStep, int | None]:
    """Build a step and run its warm-up; its peak memory is what it added to the device's."""
    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    base = torch.cuda.memory_allocated(device) if cuda else 0
    step = make()
    for _ in range(max(warmup, 1)):
        step()
    # What was on the device before (the other model, idle) stays constant during these steps.
    return step, (torch.cuda.max_memory_allocated(device) - base if cuda else None)


def measure_steps(makes: list[Callable[[], TrainStep]], steps: int, warmup: int, device: torch.device,
                  desc: str = "timing") -> list[dict[str, float | None]]:
    """Images/s (median of timed steps) and peak memory of each step, timed in alternation.

    Each is warmed up first; then the timed steps interleave, in order and in reverse by turns (a b c, c b a,
    ...), so a machine that slows down or speeds up during the run (clocks, other load) weighs on all alike.
    """
    with Ticker(desc, total=len(makes) * steps, unit="step", every=5.0) as ticker:
        warmed = [_warm(make, warmup, device) for make in makes]
        times: list[list[float]] = [[] for _ in makes]
        for i in range(steps):
            for k in (range(len(makes)) if i % 2 == 0 else reversed(range(len(makes)))):
                times[k].append(warmed[k][0]())
                ticker.update()
    batch = warmed[0][0].x.shape[0]
    return [{"images_per_s": batch / statistics.median(t), "peak_memory_bytes": peak}
            for t, (_, peak) in zip(times, warmed)]


def measure_pair(make_a: Callable[[], TrainStep], make_b: Callable[[], TrainStep], steps: int, warmup: int,
                 device: torch.device, desc: str = "timing") -> list[dict[str, float | None]]:
    """:func:`measure_steps` of two steps."""
    return measure_steps([make_a, make_b], steps, warmup, device, desc)


def finetune_rate(variant: str, batch: int, data: str, steps: int, bf16: bool) -> float:
    """Images/s of `mixer-ft finetune` itself (data, augmentation, Accelerate), steady state."""
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "mixer_ft", "finetune", "--upstream", "none", "--model", variant,
               "--dataset", data, "--steps", str(steps), "--batch", str(batch), "--eval-every", "0",
               "--mixed-precision", "bf16" if bf16 else "no", "--output-dir", f"{tmp}/run",
               "--set", f'results_dir="{tmp}/results"', "--set", "checkpoint_every=0",
               "--set", f"log_every={max(steps // 2, 1)}", "--set", 'name="bench"']
        out = subprocess.run(cmd, capture_output=True, text=True)
        if out.returncode:
            raise ConfigError(f"The fine-tune run of the benchmark failed:\n{out.stderr[-2000:]}")
        record = json.loads(Path(f"{tmp}/results/bench.json").read_text())
    return float(record["images_per_s"])  # past the first step (compile, warm-up)


def bench_config(variant: str, img_size: int) -> MixerConfig:
    """The architecture fine-tuning the 224 weights at ``img_size`` trains: tiled where it can be."""
    base = MixerConfig.from_variant(variant, num_classes=1000, gelu="exact")
    return resized_config(base, img_size, "tile" if img_size % base.img_size == 0 else "resample")


def our_step(cfg: MixerConfig, batch: int, device: torch.device, bf16: bool, fast: bool = True,
             compile_mode: str = "auto") -> TrainStep:
    """Our step as `mixer-ft finetune` runs it: token-major layout, fused optimizer and, on CUDA,
    torch.compile. ``compile_mode``: "auto" as finetune does, "eager" never compiled, else that
    torch.compile mode ("default", "reduce-overhead", "max-autotune", ...) on any device."""
    compiled, mode = compiling(fast, device, compile_mode)
    return TrainStep(MlpMixer(cfg).set_fast_path(fast), batch, cfg.img_size, device, bf16, compile_model=compiled,
                     fused=fast, compile_mode=mode)


def compiling(fast: bool, device: torch.device, compile_mode: str) -> tuple[bool, str | None]:
    """(whether our step is compiled, torch.compile's mode) for ``compile_mode`` (see :func:`our_step`)."""
    compiled = fast and device.type == "cuda" if compile_mode == "auto" else compile_mode != "eager"
    return compiled, None if compile_mode in ("auto", "eager", "default") else compile_mode


def run_bench(model: str = "S/32", batch: int = 16, device: str | None = None, img_size: int = 224,
              precision: str | None = None, steps: int = 20, warmup: int = 3, fast: bool = True,
              finetune_data: str | None = None, compile_mode: str = "auto") -> dict[str, Any]:
    """Measure ours and timm's step (and optionally the whole fine-tune path); return the record.
    ``compile_mode``: how our step is compiled (see :func:`our_step`)."""
    from mixer_ft.train.devices import resolve_device

    variant = canonical_variant(model)
    dev = resolve_device(device)
    precision = precision or ("bf16" if dev.type == "cuda" else "fp32")
    if precision not in ("fp32", "bf16"):
        raise ConfigError(f"--precision must be fp32 or bf16, got {precision!r}.")
    bf16 = precision == "bf16"
    if compile_mode not in ("auto", "eager", *COMPILE_MODES):
        raise ConfigError(f"--compile must be auto, eager or one of {', '.join(COMPILE_MODES)}, got {compile_mode!r}.")
    cfg = bench_config(variant, img_size)
    torch.manual_seed(0)
    # timm eager with torch's default optimizer, as most run it; where ours is compiled, timm compiled the same way
    # too: the fair peer for a claim of speed (each ratio names its peer).
    compiled, mode = compiling(fast, dev, compile_mode)
    makes = [lambda: our_step(cfg, batch, dev, bf16, fast, compile_mode),
             lambda: TrainStep(_timm_model(variant, cfg), batch, img_size, dev, bf16)]
    if compiled:
        makes.append(lambda: TrainStep(_timm_model(variant, cfg), batch, img_size, dev, bf16, compile_model=True,
                                       compile_mode=mode))
    timed = measure_steps(makes, steps, warmup, dev, desc=f"timing ours and timm's {variant} step (batch {batch}, "
                          f"{img_size} px, {dev.type}{', timm eager and compiled' if compiled else ''})")
    ours, theirs = timed[0], timed[1]
    timm_compiled = timed[2]["images_per_s"] if compiled else None
    peak = _peak(dev)
    train_flops = 3 * forward_flops(cfg)
    record = {
        "model": variant, "batch": batch, "img_size": img_size, "tokens_mlp_dim": cfg.tokens_mlp_dim,
        "precision": precision,
        "device": hardware(dev, 1)["device"], "fast_path": fast, "compile_mode": compile_mode,
        "ours_images_per_s": round(ours["images_per_s"], 2), "timm_images_per_s": round(theirs["images_per_s"], 2),
        "ratio": round(ours["images_per_s"] / theirs["images_per_s"], 3),  # against timm eager
        "ours_compiled": compiled,
        "timm_compiled_images_per_s": round(timm_compiled, 2) if timm_compiled else None,
        "ratio_vs_timm_compiled": round(ours["images_per_s"] / timm_compiled, 3) if timm_compiled else None,
        "peak_memory_bytes": ours["peak_memory_bytes"], "timm_peak_memory_bytes": theirs["peak_memory_bytes"],
        "mfu": round(ours["images_per_s"] * train_flops / peak, 4) if peak and bf16 else None,
        "train_gflop_per_image": round(train_flops / 1e9, 3),
        "timed_steps": steps, "warmup_steps": warmup, "versions": versions(),
        "date": time.strftime("%Y-%m-%d"),
    }
    if finetune_data:
        rate = finetune_rate(variant, batch, finetune_data, steps=max(4 * steps, 20), bf16=bf16)
        record["finetune_images_per_s"] = round(rate, 2)
        record["finetune_vs_step"] = round(rate / ours["images_per_s"], 3)
    return record


# What `mixer-ft bench --json` prints of the record: each ratio beside the peer it is against
JSON_KEYS = ("model", "batch", "device", "ours_images_per_s", "timm_images_per_s", "ratio", "timm_compiled_images_per_s",
             "ratio_vs_timm_compiled", "peak_memory_bytes", "mfu")


def device_slug(device: str) -> str:
    """A device's name as a file-name part: "NVIDIA H200" -> "nvidia-h200", "CPU (Intel ...)" -> "cpu"."""
    return "".join(ch if ch.isalnum() else "-" for ch in device.split("(")[0].strip()).strip("-").lower()


def save(record: dict[str, Any], folder: str | Path = "results/bench") -> Path:
    """results/bench/<device>_<model>_b<batch>_<precision>.json, written atomically."""
    dev = device_slug(record["device"])
    size = "" if record.get("img_size", 224) == 224 else f"_{record['img_size']}px"
    name = f"{dev}_{record['model'].replace('/', '')}{size}_b{record['batch']}_{record['precision']}.json"
    path = Path(folder) / name
    atomic_write_text(path, json_text(record, indent=2) + "\n")
    return path


def summary_text(rec: dict[str, Any]) -> str:
    """``mixer-ft bench``'s text: our images/s beside timm's (and MFU on CUDA; the fine-tune's, where timed)."""
    ours = "compiled" if rec.get("ours_compiled") else "eager"
    text = (f"{rec['model']} batch {rec['batch']} {rec['precision']} on {rec['device']}: ours ({ours}) "
            f"{rec['ours_images_per_s']:.1f} img/s, timm eager {rec['timm_images_per_s']:.1f} img/s, "
            f"ratio {rec['ratio']:.2f}x" + (f"; timm compiled {rec['timm_compiled_images_per_s']:.1f} img/s, ratio "
                                           f"{rec['ratio_vs_timm_compiled']:.2f}x" if rec.get("timm_compiled_images_per_s")
                                           else "") + (f", MFU {rec['mfu']:.1%}" if rec["mfu"] is not None else "") + "\n")
    if "finetune_images_per_s" in rec:
        text += f"mixer-ft finetune: {rec['finetune_images_per_s']:.1f} img/s = {rec['finetune_vs_step']:.2f}x the bare step\n"
    return text


__all__ = ["JSON_KEYS", "TrainStep", "bench_config", "compiling", "device_slug", "forward_flops", "measure_pair", "measure_steps",
           "our_step", "run_bench", "save", "summary_text"]
