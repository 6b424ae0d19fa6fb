"""The machine a benchmark ran on, as every report describes it.

    machine()             # {"cpu_model", "cpus", "avx512_vnni", "avx512_bf16", "amx", "gpu", "python",
                          #  "load_average_at_start"}
    summary(machine())    # "AMD EPYC 9R14 96-Core Processor, 2 cores"

The CPU comes from the engines' own probes (:func:`engines.config.cpu_model`, ``cpu_flags``,
``default_threads``: what a worker would use here), the GPU from the NVIDIA driver. Nothing here
imports torch: loading it would fix OpenMP's wait policy before the engines set it
(:func:`engines.config.openmp_wait_policy`), and the benchmark would measure spinning threads.
"""
from __future__ import annotations

import os
import platform
from pathlib import Path

from engines.config import cpu_flags, cpu_model, default_threads

NVIDIA_GPUS = Path("/proc/driver/nvidia/gpus")


def machine() -> dict:
    """CPU model, threads, the int8/bf16 instruction sets the engines care about, GPU, Python, and the
    load average now (the machine may be shared: a report says how busy it was)."""
    flags = cpu_flags() or frozenset()
    return {
        "cpu_model": cpu_model(),
        "cpus": default_threads(),
        "avx512_vnni": "avx512_vnni" in flags,
        "avx512_bf16": "avx512_bf16" in flags,
        "amx": "amx_tile" in flags,
        "gpu": gpu_model(),
        "python": platform.python_version(),
        "load_average_at_start": list(os.getloadavg()),
    }


def summary(described: dict) -> str:
    """One line for a report's prose: ``<CPU model>, <threads> cores``."""
    return f"{described['cpu_model']}, {described['cpus']} cores"


def gpu_model(gpus: Path = NVIDIA_GPUS) -> str | None:
    """The first NVIDIA GPU's model as its driver names it; None without one."""
    for information in sorted(gpus.glob("*/information")):
        try:
            text = information.read_text(encoding="utf-8", errors="replace")
        except OSError:
            continue
        for line in text.splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "Model":
                return value.strip()
    return None
