"""Read what a loaded detector is (output layout, class names, stride, layers to keep float) off the module."""
from __future__ import annotations

import re

import torch
from torch import nn

from .errors import ModelLoadError
from .outputs import ULTRALYTICS, YOLOV5


def _is_dfl_head(module: nn.Module) -> bool:
    """Anchor-free heads with distribution focal loss boxes (Ultralytics Detect, YOLOv9 DDetect, ...)."""
    return hasattr(module, "reg_max") and hasattr(module, "nc") and hasattr(module, "no")


def _is_anchor_head(module: nn.Module) -> bool:
    """Anchor-based YOLOv5/YOLOv7 heads: an `anchors` tensor, `na` anchors per cell, `no` outputs per anchor."""
    return isinstance(getattr(module, "anchors", None), torch.Tensor) and all(
        hasattr(module, a) for a in ("na", "no", "nl"))


def find_head(model: nn.Module) -> tuple[str, nn.Module]:
    """Return (layout, head module) for the last detection head in the model."""
    for _, module in reversed(list(model.named_modules())):
        if _is_dfl_head(module):
            return ULTRALYTICS, module
        if _is_anchor_head(module):
            return YOLOV5, module
    raise ModelLoadError(f"{type(model).__name__}: found no detection head (an anchor-based YOLOv5/YOLOv7 Detect with "
                         "`anchors`, `na`, `no`, `nl`, or an anchor-free head with `reg_max`); only detectors are "
                         "supported")


def class_names(model: nn.Module, head: nn.Module) -> list[str]:
    """Class names from `model.names` (list or {index: name}), else "0".."nc-1"."""
    names = getattr(model, "names", None)
    if isinstance(names, dict):
        names = [str(names[k]) for k in sorted(names)]
    if isinstance(names, (list, tuple)) and names:
        return [str(n) for n in names]
    return [str(i) for i in range(int(head.nc))]


def max_stride(model: nn.Module, head: nn.Module) -> int:
    """Largest downsampling factor of the pyramid, e.g. 32."""
    stride = getattr(model, "stride", None)
    if stride is None:
        stride = getattr(head, "stride", None)
    if stride is None:
        raise ModelLoadError(f"{type(model).__name__}: no `stride` attribute on the model or its head")
    return int(torch.as_tensor(stride).max().item())


# class names of modules every detector keeps float: DFL box-distribution integrals (a fixed 0..reg_max-1 weighted
# sum that int8 would blur); quantize_model's default ignore list and the TensorRT rules both read this
FLOAT_MODULE_CLASSES = ("DFL",)


def float_by_default(model: nn.Module) -> list[str]:
    """Regexes of layers to keep float: modules whose class is in FLOAT_MODULE_CLASSES (DFL)."""
    return [re.escape(name) + r"(\..*)?$" for name, m in model.named_modules()
            if type(m).__name__ in FLOAT_MODULE_CLASSES]
