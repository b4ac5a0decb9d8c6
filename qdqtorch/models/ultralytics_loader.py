"""Load Ultralytics detectors (checkpoints saved by the `ultralytics` package, or model yamls) through that package.

An Ultralytics `.pt` is a pickle too: loading it runs code, so load only files you trust.
"""
from __future__ import annotations

from typing import Any

from torch import nn

from ..errors import INSTALL_HINT
from .errors import ModelLoadError, ModelNotFoundError


def _yolo_class(what: str) -> Any:
    try:
        from ultralytics import YOLO
    except ImportError as exc:
        raise ModelLoadError(f"{what} is an Ultralytics model and needs the `ultralytics` package "
                             f"({exc}): {INSTALL_HINT.format(extra='yolo')}") from exc
    return YOLO


def _use_one_to_many(head: nn.Module, what: str) -> bool:
    """Switch an end-to-end (NMS-free) head to its one-to-many branch, whose (B, 4 + nc, N) output we evaluate."""
    if not getattr(head, "end2end", False):
        return False
    try:
        head.end2end = False
    except AttributeError:
        pass
    if getattr(head, "end2end", False):
        raise ModelLoadError(f"{what}: its end-to-end head has no one-to-many branch left (fused?), so it cannot give "
                             "(B, 4 + nc, N) predictions; pass the unfused checkpoint")
    return True


def load_ultralytics(spec: str, what: str) -> tuple[nn.Module, str]:
    """Return (detection model, note) for an Ultralytics checkpoint path or model yaml (name or path)."""
    YOLO = _yolo_class(what)
    try:
        wrapper = YOLO(spec, verbose=False)
    except FileNotFoundError as exc:
        raise ModelNotFoundError(f"{what}: not found, neither on disk nor among the configs bundled with ultralytics "
                                 f"({exc}); pass a local checkpoint path or a model yaml such as yolov8n.yaml") from exc
    except Exception as exc:  # ultralytics raises many types for unusable files
        raise ModelLoadError(f"{what}: ultralytics could not load it: {type(exc).__name__}: {exc}") from exc
    task = getattr(wrapper, "task", None)
    if task != "detect":
        raise ModelLoadError(f"{what} is an Ultralytics {task!r} model; only detection models are supported")
    model = wrapper.model
    if not isinstance(model, nn.Module):
        raise ModelLoadError(f"{what}: ultralytics returned no PyTorch module (exported formats are not supported)")
    head = model.model[-1] if hasattr(model, "model") else model
    note = " (end-to-end head switched to its one-to-many branch)" if _use_one_to_many(head, what) else ""
    return model, note
