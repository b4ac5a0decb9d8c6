"""Shared test fixtures: paths into ../shared, skipped with a clear reason when it is absent."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

os.environ.setdefault("YOLO_OFFLINE", "true")  # never let ultralytics reach for the network in tests

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("QDQTORCH_SHARED", REPO_ROOT.parent / "shared")).resolve()
COCO128 = SHARED / "data" / "coco128"
YOLOV5N = SHARED / "models" / "yolov5n.pt"
PPE_YOLOV5N = SHARED / "models" / "ppe_yolov5n.pt"
YOLOV5_REPO_FIXTURE = REPO_ROOT / "tests" / "fixtures" / "yolov5_repo"
YOLOV7_REPO_FIXTURE = REPO_ROOT / "tests" / "fixtures" / "yolov7_repo"


def _require(path: Path, what: str) -> Path:
    if not path.exists():
        pytest.skip(f"{what} not found at {path}: these tests need the read-only ../shared folder beside the checkout "
                    f"(or QDQTORCH_SHARED pointing at it)")
    return path


@pytest.fixture(scope="session")
def coco128_dir() -> Path:
    """The real COCO 2017 subset in ../shared/data/coco128."""
    return _require(COCO128, "coco128 data")


@pytest.fixture(scope="session")
def yolov5n_path() -> Path:
    """The official YOLOv5n checkpoint in ../shared/models."""
    return _require(YOLOV5N, "yolov5n.pt checkpoint")


@pytest.fixture(scope="session")
def ppe_yolov5n_path() -> Path:
    """A third-party YOLOv5n fine-tuned on 2 classes (helmet, vest), no labels for it here."""
    return _require(PPE_YOLOV5N, "ppe_yolov5n.pt checkpoint")


def randomise_batchnorm(model: torch.nn.Module) -> None:
    """Non-trivial BatchNorm statistics, so that fusing them is tested (a fresh BatchNorm is the identity)."""
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.3, 0.3)
