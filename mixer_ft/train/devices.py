"""What a run asks of the device it runs on: the process group's backend, precision, compilation
and the micro-batch that fits in memory. Each answer is decided once, before training starts.
"""

from __future__ import annotations

from typing import Any

import torch

from mixer_ft.errors import ConfigError
from mixer_ft.model.config import MixerConfig
from mixer_ft.model.mixer import MlpMixer
from mixer_ft.settings import setting
from mixer_ft.text import get_logger
from mixer_ft.train.recipe import Recipe

log = get_logger(__name__)


def resolve_device(name: str | None) -> torch.device:
    """``--device``: cpu, cuda or cuda:N (default: cuda where available, else cpu).

    Raises:
        ConfigError: an unknown device, or one this machine does not have.
    """
    if name is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except (RuntimeError, TypeError):
        raise ConfigError(f"Unknown device {name!r}; use cpu, cuda or cuda:N.") from None
    if dev.type not in ("cpu", "cuda", "mps"):
        raise ConfigError(f"Unknown device {name!r}; use cpu, cuda or cuda:N.")
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"--device {name}: this machine has no CUDA device; use --device cpu.")
    if dev.type == "cuda" and (dev.index or 0) >= torch.cuda.device_count():
        raise ConfigError(f"--device {name}: this machine has {torch.cuda.device_count()} CUDA device(s).")
    if dev.type == "mps" and not torch.backends.mps.is_available():
        raise ConfigError(f"--device {name}: this machine has no Apple GPU; use --device cpu.")
    return dev


def use_cpu() -> bool:
    """With no accelerator, processes started by `accelerate launch` (torchrun) talk over gloo on
    the CPU; Accelerate only does that when told the run is a CPU run."""
    from accelerate.utils import is_mps_available, is_xpu_available, parse_flag_from_env

    return parse_flag_from_env("ACCELERATE_USE_CPU") or not (
        torch.cuda.is_available() or is_mps_available() or is_xpu_available())


def activation_bytes(cfg: MixerConfig) -> int:
    """Bytes one image's forward pass keeps for the backward pass, counted from the architecture (float32):
    per block, the two LayerNorms' inputs and outputs, and each MLP's hidden layer before and after its
    GELU (tokens x channels, token-MLP width x channels, tokens x channel-MLP width)."""
    s, c = cfg.num_tokens, cfg.hidden_dim
    block = 4 * s * c + 2 * cfg.tokens_mlp_dim * c + 2 * s * cfg.channels_mlp_dim
    return 4 * (cfg.num_blocks * block + 2 * s * c + cfg.in_chans * cfg.img_size ** 2)


# Measured peaks run above the count (temporaries of the backward pass, the allocator's slack): the
# count is scaled by this before it is set against free memory (tests/test_first_hour.py measures it).
ACTIVATION_SLACK = 1.4


def host_micro_batch(cfg: MixerConfig, per_process: int, params: int) -> tuple[int, str]:
    """The largest divisor of ``per_process`` whose training step fits the host's free memory, and why.

    Raises:
        ConfigError: not even one image fits; says what would.
    """
    from mixer_ft.train.hardware import memory_free

    free, bound = memory_free()
    processes = setting("LOCAL_WORLD_SIZE")  # processes of this host share it
    room = free // processes - 3 * 4 * params  # gradients, momentum and a working copy: made at the first step
    each = int(activation_bytes(cfg) * ACTIVATION_SLACK)
    fit = room // each if room > 0 else 0
    gb = f"{free / 2**30:.1f} GB free ({bound})"
    if fit < 1:
        raise ConfigError(f"Training {cfg.describe()} needs about {(each + 12 * params) / 2**30:.1f} GB for even one image, "
                          f"more than the {gb}. A smaller model (S/32, B/32) or a smaller img_size fits; or a GPU.")
    micro = max(d for d in range(1, per_process + 1) if per_process % d == 0 and d <= fit)
    return micro, f"micro-batch {micro} ({micro * each / 2**30:.1f} GB of activations; {gb})"


def eval_batch(cfg: MixerConfig, device: torch.device) -> int:
    """Images an evaluation pass takes at once: 256, or on the CPU as many as the host's free memory holds
    (a forward pass keeps no activations, but its largest layer's input and output are there at once)."""
    from mixer_ft.train.evaluation import EVAL_BATCH

    if device.type != "cpu":
        return EVAL_BATCH
    from mixer_ft.train.hardware import memory_free

    each = 4 * 2 * cfg.num_tokens * max(cfg.channels_mlp_dim, cfg.hidden_dim) * 2 + 4 * 3 * cfg.img_size ** 2
    return int(max(1, min(EVAL_BATCH, memory_free()[0] // 2 // int(each * ACTIVATION_SLACK))))


def micro_batch(recipe: Recipe, per_process: int, model: MlpMixer, device: torch.device, precision: str) -> int:
    """The per-process forward-pass size. "auto" finds the largest that fits the device's memory: probed on a
    GPU, counted on the CPU (where a step too large is not an error but the kernel's silent kill). On the CPU
    with no micro-batch set, a batch too large for the host is split into micro-batches too, and said so."""
    if device.type == "cpu" and recipe.micro_batch in (None, "auto"):
        micro, why = host_micro_batch(model.config, per_process, sum(p.numel() for p in model.parameters()))
        if recipe.micro_batch == "auto":  # and then tried, as on a GPU: a limit the count missed shows here
            micro = probe_micro_batch(model, per_process, device, precision, largest=micro)
        if micro < per_process:
            log.warning("%d images a step do not fit this machine's memory at once: %s, %d accumulated a step "
                        "(the same training)", per_process, why, per_process // micro)
        return micro
    if recipe.micro_batch is None:
        return per_process
    if recipe.micro_batch == "auto":
        micro = probe_micro_batch(model, per_process, device, precision)
    else:
        micro = int(recipe.micro_batch)
    if per_process % micro:
        raise ConfigError(f"micro-batch {micro} does not divide the {per_process} images each process takes "
                          f"from a global batch of {recipe.global_batch}; use a divisor.")
    return micro


def out_of_memory(e: RuntimeError) -> bool:
    """torch's OOM error (CUDA and others), or the CPU allocator's plain RuntimeError."""
    return isinstance(e, torch.OutOfMemoryError) or "can't allocate memory" in str(e)


def probe_micro_batch(model: MlpMixer, per_process: int, device: torch.device, precision: str,
                      largest: int | None = None) -> int:
    """The largest divisor of ``per_process`` (up to ``largest``) whose forward and backward fit the device's memory.

    The probe leaves no trace: gradients are dropped, the weights are untouched (no optimizer
    step) and no random numbers are drawn, so training is the same as with that micro-batch given.
    """
    cfg, dtype = model.config, {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
    model.to(device)
    for m in [d for d in range(largest or per_process, 0, -1) if per_process % d == 0]:
        try:
            x = torch.zeros(m, cfg.in_chans, cfg.img_size, cfg.img_size, device=device)
            with torch.autocast(device.type, dtype=dtype or torch.bfloat16, enabled=dtype is not None):
                model(x).float().sum().backward()
            return m
        except RuntimeError as e:
            if not out_of_memory(e):
                raise
        finally:
            model.zero_grad(set_to_none=True)
            if device.type == "cuda":
                torch.cuda.empty_cache()
    raise ConfigError(f"Not even a micro-batch of 1 fits this device's memory ({device}).")


def compile_mode(recipe: Recipe, device: torch.device) -> str | None:
    """torch.compile's mode for the run, or None when it runs eager.

    The recipe's ``compile``: a mode ("default", "reduce-overhead" for CUDA graphs, "max-autotune",
    "max-autotune-no-cudagraphs"), true (the default mode) or false; unset, the default mode with the
    fast path on CUDA only (on a CPU its start-up outweighs a short run's gain).
    """
    wanted = recipe.compile if recipe.compile is not None else recipe.fast_path and device.type == "cuda"
    if wanted is False:
        return None
    return "default" if wanted is True else str(wanted)


def dynamo_plugin(recipe: Recipe, device: torch.device) -> Any:
    """Accelerate's TorchDynamoPlugin for the run: inductor in :func:`compile_mode`'s mode, or none."""
    from accelerate.utils import TorchDynamoPlugin

    mode = compile_mode(recipe, device)
    if mode is None:
        return TorchDynamoPlugin(backend="no")
    return TorchDynamoPlugin(backend="inductor", mode=None if mode == "default" else mode)


def synchronize(device: torch.device) -> None:
    """Wait until the device has done the work queued on it (a no-op on the CPU, which runs it at once)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def quiet_compiler() -> None:
    """Stop torch.compile's compile workers once the training step is compiled.

    inductor starts a pool of worker processes (one per core) whenever it compiles. After a cold
    compile they have done their work and sit idle; after a warm start (every kernel found in the
    cache) the pool is still starting up when the first step is done, and its processes compete
    with the training loop for the CPU. Nothing is left to compile then; a later compile starts a
    new pool.
    """
    try:
        from torch._inductor.async_compile import shutdown_compile_workers

        shutdown_compile_workers()
    except Exception as e:  # noqa: BLE001 - a torch without this pool, or one that changed it: training goes on
        log.debug("could not stop torch.compile's workers: %s", e)


def precision(recipe: Recipe, device: torch.device) -> str:
    """"auto": bf16 where the device computes it natively (a GPU that has it, a CPU with AVX512-BF16
    or AMX), else fp32. An explicit bf16 on a CPU that would emulate it runs, with a warning."""
    from mixer_ft.train.hardware import bf16_slowdown, cpu_isa, native_bf16

    native = native_bf16(device)
    if recipe.mixed_precision == "auto":
        return "bf16" if native else "no"
    if recipe.mixed_precision == "bf16" and device.type == "cpu" and not native:
        log.warning("mixed_precision = \"bf16\" on a CPU without native bf16 (%s): a bf16 matrix product ran "
                    "%.0fx slower than fp32 here. Use --mixed-precision auto or no.", cpu_isa(), bf16_slowdown())
    return recipe.mixed_precision


def set_threads(device: torch.device, processes: int) -> dict[str, Any] | None:
    """On a CPU: torch's intra-op threads, one a core this process may use (:func:`~mixer_ft.train.hardware.cpu_budget`:
    affinity, a container's quota, shared among the run's processes on this host), unless ``OMP_NUM_THREADS`` set
    them; how its OpenMP threads wait (``OMP_WAIT_POLICY``, set by :mod:`mixer_ft.exits` before torch starts). Returns
    what the record keeps (None on a GPU)."""
    if device.type != "cpu":
        return None
    from mixer_ft.settings import setting
    from mixer_ft.train.hardware import cpu_budget

    cores, why = cpu_budget(processes)
    given = setting("OMP_NUM_THREADS")
    if given is None:
        torch.set_num_threads(cores)
        why = f"{why}; OMP_NUM_THREADS sets another"
    else:
        why = "OMP_NUM_THREADS"
    spin = setting("GOMP_SPINCOUNT")
    policy = setting("OMP_WAIT_POLICY") or (f"spin {spin:,}" if spin is not None else None)
    return {"threads": torch.get_num_threads(), "why": why, "wait_policy": policy}


def threads_said(threads: dict[str, Any]) -> str:
    """The line a CPU run says of its threads."""
    policy = threads["wait_policy"] or ""
    wait = ("passively (OMP_WAIT_POLICY=PASSIVE: a waiting thread sleeps)" if policy == "passive" else
            f"{policy.removeprefix('spin ')} spins, then sleep (GOMP_SPINCOUNT)" if policy.startswith("spin") else
            "actively (OMP_WAIT_POLICY=ACTIVE)" if policy == "active" else "as OpenMP does by default")
    return f"threads: {threads['threads']} ({threads['why']}); OpenMP threads wait {wait}"


def precision_said(recipe: Recipe, device: torch.device, chosen: str) -> str | None:
    """The line a run says when ``mixed_precision = "auto"`` chose for it: what, and why (None: it was asked)."""
    if recipe.mixed_precision != "auto":
        return None
    from mixer_ft.train.hardware import cpu_isa

    where = f"this CPU computes bf16 natively ({cpu_isa()})" if device.type == "cpu" else f"this {device.type} device"
    why = f"{where} has bf16" if chosen == "bf16" and device.type != "cpu" else where if chosen == "bf16" else \
        f"this {'CPU' if device.type == 'cpu' else device.type + ' device'} has no native bf16"
    return (f"mixed precision: {'bf16' if chosen == 'bf16' else 'fp32'} (auto: {why}; --mixed-precision no or bf16 "
            "sets it)")


__all__ = ["compile_mode", "dynamo_plugin", "micro_batch", "precision", "precision_said", "probe_micro_batch",
           "quiet_compiler", "resolve_device", "set_threads", "synchronize", "threads_said", "use_cpu"]
