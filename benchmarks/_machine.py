"""One line describing the machine a benchmark ran on (CPU model, cores, threads, GPU, load): timings depend on it."""
from __future__ import annotations

import os
import platform
from pathlib import Path

import torch


def machine(device: str = "cpu") -> str:
    """CPU model, cores, torch threads, the GPU if any (and whether this run uses it), load average at start."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    text = f"{cpu}, {os.cpu_count()} cores, torch {torch.__version__}, {torch.get_num_threads()} torch thread(s)"
    if torch.cuda.is_available():
        text += f", GPU {torch.cuda.get_device_name()}" + ("" if device.startswith("cuda") else " (unused: CPU run)")
    if hasattr(os, "getloadavg"):
        text += f", load average at start {os.getloadavg()[0]:.1f}"
    return text
