"""What this machine is: the processor's name and features, whether a device computes bf16 natively, the name
a record gives the device. Facts read from the machine, decided nothing."""

from __future__ import annotations

import os
import platform
from pathlib import Path
from typing import Any

import torch


def cpu_name() -> str:
    """The processor's model name (from /proc/cpuinfo where there is one)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cpu_flags() -> set[str]:
    """The processor's feature flags (x86 "flags", ARM "Features" in /proc/cpuinfo); empty elsewhere."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("flags", "Features")):
                return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def bf16_slowdown(size: int = 256, repeats: int = 5) -> float:
    """How many times slower a bf16 matrix product runs than an fp32 one on this CPU, measured now."""
    import time

    a = torch.randn(size, size)
    times = {}
    for dtype in (torch.float32, torch.bfloat16):
        x = a.to(dtype)
        x @ x  # warm-up
        t0 = time.perf_counter()
        for _ in range(repeats):
            x @ x
        times[dtype] = time.perf_counter() - t0
    return times[torch.bfloat16] / max(times[torch.float32], 1e-9)


def cpu_native_bf16() -> bool:
    """Whether the CPU computes bf16 natively (AVX512-BF16, AMX or ARM's BF16); elsewhere torch emulates
    it, about a hundred times slower than fp32."""
    return bool(cpu_flags() & {"avx512_bf16", "amx_bf16", "bf16"})


def native_bf16(device: torch.device) -> bool:
    """Whether ``device`` computes bf16 natively: a GPU that has it, a CPU with AVX512-BF16, AMX or ARM bf16."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    return device.type == "cpu" and cpu_native_bf16()


def cpu_isa() -> str:
    """The CPU's instruction set level for matrix work, e.g. "AVX2", "AVX512", "AVX512_BF16", "AMX".

    Two CPUs of one name can differ here by a hundredfold in bf16 (native or emulated), so run
    records and benchmarks name it.
    """
    flags = cpu_flags()
    for level, flag in (("AMX", "amx_bf16"), ("AVX512_BF16", "avx512_bf16"), ("AVX512", "avx512f"), ("AVX2", "avx2"),
                        ("SVE", "sve"), ("NEON+BF16", "bf16"), ("NEON", "asimd")):
        if flag in flags:
            return level
    return torch.backends.cpu.get_cpu_capability()


def hardware(device: torch.device, num_processes: int) -> dict[str, Any]:
    """The device name (a CPU's with its cores and instruction set level) and how many took part."""
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
    else:
        name = f"CPU ({cpu_name()}, {os.cpu_count()} cores, {cpu_isa()})"
    return {"device": name, "type": device.type, "count": num_processes}


def _read_int(path: str) -> int | None:
    try:
        text = Path(path).read_text().strip()
    except (OSError, ValueError):
        return None
    return int(text) if text.isdigit() else None


def _status(key: str) -> int:
    """A field of /proc/self/status in bytes (VmData, VmSize), 0 where there is none."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return 0


def cpu_budget(processes: int = 1) -> tuple[int, str]:
    """Cores this process may use, and what bounds them: the host's cores, the CPUs it may run on (its affinity:
    taskset, a container's cpuset), the container's CPU quota (cgroup cpu.max), shared among ``processes`` of the
    run on this host."""
    bounds = [(os.cpu_count() or 1, "the host's cores")]
    if hasattr(os, "sched_getaffinity"):
        bounds.append((len(os.sched_getaffinity(0)), "the CPUs this process may run on"))
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()[:2]
        if quota != "max":
            bounds.append((max(1, int(quota) // int(period)), "the container's CPU quota"))
    except (OSError, ValueError):
        quota_us, period_us = _read_int("/sys/fs/cgroup/cpu/cpu.cfs_quota_us"), _read_int("/sys/fs/cgroup/cpu/cpu.cfs_period_us")
        if quota_us and period_us:
            bounds.append((max(1, quota_us // period_us), "the container's CPU quota"))
    cores, why = min(bounds, key=lambda b: b[0])  # the first of equals: the plainest reason
    if processes > 1:
        return max(1, cores // processes), f"{why}, shared by {processes} processes"
    return cores, why


def memory_free() -> tuple[int, str]:
    """Bytes this process may still take on the host, and what bounds it: the memory the kernel reports
    available, the container's (cgroup) limit, or the process's own limits (ulimit -d, -v)."""
    import resource

    bounds = []
    try:
        import psutil

        bounds.append((psutil.virtual_memory().available, "the host's available memory"))
    except ImportError:  # psutil comes with accelerate; without it, MemAvailable
        info = dict(line.split(":", 1) for line in Path("/proc/meminfo").read_text().splitlines() if ":" in line)
        if "MemAvailable" in info:
            bounds.append((int(info["MemAvailable"].split()[0]) * 1024, "the host's available memory"))
    for limit, usage in (("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),
                         ("/sys/fs/cgroup/memory/memory.limit_in_bytes", "/sys/fs/cgroup/memory/memory.usage_in_bytes")):
        cap, used = _read_int(limit), _read_int(usage)
        if cap is not None and used is not None and cap < 1 << 60:
            bounds.append((cap - used, "the container's memory limit"))
    for which, key, name in ((resource.RLIMIT_DATA, "VmData", "ulimit -d"), (resource.RLIMIT_AS, "VmSize", "ulimit -v")):
        soft, _ = resource.getrlimit(which)
        if soft != resource.RLIM_INFINITY:
            bounds.append((soft - _status(key), f"this process's limit ({name})"))
    free, why = min(bounds) if bounds else (1 << 62, "no limit known")
    return max(free, 0), why


__all__ = ["bf16_slowdown", "cpu_budget", "cpu_flags", "cpu_isa", "cpu_name", "cpu_native_bf16", "hardware", "memory_free",
           "native_bf16"]
