"""What a detector's forward returns, and how to pick the one prediction tensor out of it."""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ..errors import UsageError

#: (B, N, 5 + nc): xywh in input pixels, sigmoid objectness, sigmoid class scores (YOLOv5/YOLOv7 heads)
YOLOV5 = "yolov5"
#: (B, 4 + nc, N): xywh in input pixels, sigmoid class scores, no objectness (Ultralytics YOLOv8/11/26 heads)
ULTRALYTICS = "ultralytics"
LAYOUTS = (YOLOV5, ULTRALYTICS)


def _first_3d_tensor(output: Any) -> torch.Tensor | None:
    """Depth-first search for the first rank-3 tensor: the decoded predictions come before the raw maps."""
    if isinstance(output, torch.Tensor):
        return output if output.dim() == 3 else None
    if isinstance(output, dict):
        output = list(output.values())
    if isinstance(output, (list, tuple)):
        for item in output:
            found = _first_3d_tensor(item)
            if found is not None:
                return found
    return None


def describe_structure(output: Any) -> str:
    """Short text of a (nested) model output's structure for error messages, e.g. "tuple(Tensor(1, 84, 8400), ...)"."""
    if isinstance(output, torch.Tensor):
        return f"Tensor{tuple(output.shape)}"
    if isinstance(output, dict):
        return "{" + ", ".join(f"{k!r}: {describe_structure(v)}" for k, v in output.items()) + "}"
    if isinstance(output, (list, tuple)):
        return type(output).__name__ + "(" + ", ".join(describe_structure(v) for v in output) + ")"
    return type(output).__name__


def prediction_tensor(output: Any) -> torch.Tensor:
    """The decoded prediction tensor in whatever a detector returns (tensor, tuple, list or dict): the first rank-3
    tensor, depth first; the one picker that export (`PredictionOnly`) and evaluation use."""
    pred = _first_3d_tensor(output)
    if pred is None:
        raise UsageError(f"the model output holds no (batch, ., .) prediction tensor: got {describe_structure(output)}."
                         " Is the model in eval mode?")
    return pred


def select_predictions(output: Any, layout: str) -> torch.Tensor:
    """`prediction_tensor` of a detector's output, checked against `layout`'s shape."""
    if layout not in LAYOUTS:
        raise UsageError(f"unknown prediction layout {layout!r}: expected one of {LAYOUTS}")
    pred = prediction_tensor(output)
    if torch.jit.is_tracing():  # shape checks would only emit TracerWarnings during ONNX export
        return pred
    min_channels = 6 if layout == YOLOV5 else 5
    channels = pred.shape[2] if layout == YOLOV5 else pred.shape[1]
    if channels < min_channels:
        expected = "(B, N, 5 + nc)" if layout == YOLOV5 else "(B, 4 + nc, N)"
        raise UsageError(f"prediction tensor of shape {tuple(pred.shape)} does not fit layout {layout!r} {expected}")
    return pred


class PredictionOnly(nn.Module):
    """Wrap a detector so forward returns only the prediction tensor (a single ONNX output)."""

    def __init__(self, model: nn.Module, layout: str) -> None:
        super().__init__()
        if layout not in LAYOUTS:
            raise UsageError(f"unknown prediction layout {layout!r}: expected one of {LAYOUTS}")
        self.model = model
        self.layout = layout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return select_predictions(self.model(x), self.layout)
