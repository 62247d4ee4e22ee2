"""What machine ran this: the CPU's model and flags (every benchmark states them), and a record's ``hardware`` block."""

from __future__ import annotations

import functools
import os
import platform
from pathlib import Path


def _cpuinfo_field(name: str) -> str | None:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(name):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None


@functools.cache
def cpu_model() -> str:
    """The CPU's model name ("Intel(R) Xeon(R) Processor", "AMD EPYC 7B13")."""
    return _cpuinfo_field("model name") or platform.processor() or platform.machine() or "unknown"


@functools.cache
def cpu_flags() -> frozenset[str]:
    """The CPU's feature flags (``amx_bf16``, ``avx512_bf16``, ``avx2`` ...); empty where ``/proc/cpuinfo`` is missing."""
    return frozenset((_cpuinfo_field("flags") or "").split())


def cpu_has_bf16() -> bool:
    """Whether the CPU computes bf16 natively (AVX-512-BF16 or AMX)."""
    return bool({"avx512_bf16", "amx_bf16"} & cpu_flags())


def hardware() -> dict:
    """The ``hardware`` block of every record; torch's view (threads, CUDA) when torch is installed."""
    flags = cpu_flags()
    info = {
        "platform": platform.platform(),
        "cpu": cpu_model(),
        "cpu_count": os.cpu_count(),
        "cpu_bf16": cpu_has_bf16(),
        "cpu_amx": "amx_bf16" in flags,
    }
    try:
        import torch
    except ImportError:
        return info
    info["torch_threads"] = torch.get_num_threads()
    info["cuda"] = torch.cuda.is_available()
    if info["cuda"]:
        info["gpu"] = torch.cuda.get_device_name(0)
        info["gpu_count"] = torch.cuda.device_count()
        info["gpu_memory_gb"] = round(torch.cuda.get_device_properties(0).total_memory / 2**30, 1)
    return info
