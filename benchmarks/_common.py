"""What the benchmarks share: the reference protocol's command-line defaults and a one-line machine description."""
from __future__ import annotations

import argparse
import os
import platform
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"


def add_protocol_args(p: argparse.ArgumentParser) -> None:
    """The reference protocol's inputs (YOLOv5n, coco128 yaml, 128 + 128 images at 640) as overridable options."""
    p.add_argument("--model", default=str(SHARED / "models/yolov5n.pt"))
    p.add_argument("--repo", default=str(ROOT / "tests/fixtures/yolov5_repo"))
    p.add_argument("--data", default=str(SHARED / "data/coco128/coco128.yaml"))
    p.add_argument("--num-calib", type=int, default=128)
    p.add_argument("--num-eval", type=int, default=None, help="default: the whole val split (128)")
    p.add_argument("--imgsz", type=int, default=640)


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
