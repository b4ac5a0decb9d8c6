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

    @property
    def num_classes(self) -> int:
        """Number of classes the head predicts."""
        return len(self.names)
