"""The result of loading a model: the module plus what its outputs mean."""
from __future__ import annotations

from dataclasses import dataclass, field

from torch import nn


@dataclass
class LoadedModel:
    """A float32 eval-mode detector with its output layout, class names, max stride, default float layers and
    (when the checkpoint records it) its training image size."""

    model: nn.Module
    layout: str  # "yolov5" (B, N, 5 + nc) or "ultralytics" (B, 4 + nc, N), see qdqtorch.models.outputs
    names: list[str]
    stride: int
    default_ignore: list[str] = field(default_factory=list)  # regexes (re.search on module names) kept float
    source: str = ""
    imgsz: int | None = None  # the image size the checkpoint says it was trained at, when it records one
    trained: bool = True  # False when built from a model yaml: random weights, every accuracy figure is noise

    def untrained_warning(self) -> str | None:
        """A one-line warning when the weights are random (model built from a yaml), else None."""
        if self.trained:
            return None
        return (f"{self.source}: the model was built from a yaml and has random weights (no trained checkpoint): "
                f"its detections and every accuracy figure are noise; pass a trained .pt or .safetensors to --model")

    @property
    def num_classes(self) -> int:
        """Number of classes the head predicts."""
        return len(self.names)
