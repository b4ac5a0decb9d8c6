"""The ONNX metadata that lets Ultralytics run our export as one of its own models (`YOLO("model.qdq.onnx")`)."""
from __future__ import annotations

from typing import Any

from .loaded import LoadedModel


def ultralytics_metadata(loaded: LoadedModel, hw: tuple[int, int], description: str, batch: int = 1
                         ) -> dict[str, Any]:
    """Keys Ultralytics' AutoBackend reads from an ONNX file's metadata_props (values go through str()).

    Why these: with a fixed-shape graph Ultralytics takes `imgsz` ([height, width]) and `batch` from here and
    letterboxes every image to that size (predict and val alike); `stride`, `names` and `task` tell it how to decode.
    `qdqtorch.layout` records our own name of the prediction layout.
    """
    return {"task": "detect", "stride": loaded.stride, "names": dict(enumerate(loaded.names)),
            "imgsz": [int(hw[0]), int(hw[1])], "batch": int(batch), "description": description,
            "qdqtorch.layout": loaded.layout}
