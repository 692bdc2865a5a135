"""The machine a bench runs on, printed beside every figure: figures from different machines, or
from one machine under different loads, are not one measurement."""

from __future__ import annotations

import os
import platform


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo``), or what ``platform`` knows."""
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as info:
            return next(line.split(":", 1)[1].strip() for line in info if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or "unknown CPU"


def describe() -> dict:
    """CPU model, core count, load average (1, 5, 15 min) and torch's thread count, and the GPU
    when CUDA is available."""
    import torch

    found = {"cpu": cpu_model(), "cores": os.cpu_count(), "load_average": [round(x, 2) for x in os.getloadavg()],
             "torch_threads": torch.get_num_threads()}
    if torch.cuda.is_available():
        found["gpu"] = torch.cuda.get_device_name()
    return found


def line() -> str:
    """:func:`describe` as one line."""
    found = describe()
    text = (f"{found['cpu']}, {found['cores']} cores, load average "
            f"{' '.join(f'{x:.2f}' for x in found['load_average'])}, torch threads {found['torch_threads']}")
    return text + (f", GPU {found['gpu']}" if "gpu" in found else "")
