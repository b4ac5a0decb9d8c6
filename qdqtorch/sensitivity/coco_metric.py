"""COCO mAP50-95 / mAP50 of a YOLO detector on a cached EvalSet, as a two-phase sweep metric (infer, then score)."""
from __future__ import annotations

import hashlib
from typing import Any, Optional

from torch import nn

from .metric import Metric
from ..errors import UsageError

COCO_KEYS = ("map50_95", "map50")


class CocoMetric(Metric):
    """mAP of `model` on `eval_set` (images decoded and letterboxed once); `infer` runs the model down to the NMS
    candidates, `score` runs the suppression and the COCO scorer, so the sweep can score one unit while the next
    one runs inference."""

    def __init__(self, eval_set: Any, layout: str, key: str = "map50_95", *, scorer: str = "fast",
                 batch_size: int = 16, conf_thres: float = 0.001, iou_thres: float = 0.65, max_det: int = 300,
                 data: Optional[str] = None) -> None:
        if key not in COCO_KEYS:
            raise UsageError(f"COCO metric {key!r}: choose one of {COCO_KEYS}")
        self.eval_set, self.layout, self.key = eval_set, layout, key
        self.scorer_name = scorer
        self.predict_kwargs = dict(layout=layout, conf_thres=conf_thres, batch_size=batch_size, progress=False)
        self.suppress_kwargs = dict(iou_thres=iou_thres, max_det=max_det)
        self._scorer = eval_set.scorer(scorer)  # built once (and fails early if pycocotools is missing)
        files = hashlib.sha256("\n".join(str(p) for p in eval_set.paths).encode()).hexdigest()
        h, w = eval_set.preprocess.hw
        description = {"metric": f"coco_{key}", "data": data, "num_images": len(eval_set),
                       "num_boxes": eval_set.num_annotations, "images_sha256": files, "imgsz": [h, w],
                       "preprocess": eval_set.preprocess.to_dict(), "scorer": scorer, "conf_thres": conf_thres,
                       "iou_thres": iou_thres, "max_det": max_det,
                       "summary": f"{data or 'images'}: {len(eval_set)} images ({eval_set.num_annotations} boxes) "
                                  f"at {h}x{w}, COCO {key} ({scorer} scorer)"}
        super().__init__(self.__call__, f"coco_{key}", True, description)

    def infer(self, model: nn.Module) -> Any:
        """Inference over the whole eval set, down to the NMS candidates (the part that needs the model)."""
        from ..eval import predict
        return predict(model, self.eval_set, **self.predict_kwargs)

    def score(self, raw: Any) -> float:
        """Suppression, then the COCO AP of the detections (the part that can overlap the next inference)."""
        from ..eval import suppress_predictions
        detections, _ = suppress_predictions(raw, self.eval_set, **self.suppress_kwargs)
        return float(getattr(self._scorer.score(detections), self.key))

    def noise(self, model: nn.Module, resamples: int = 200, seed: int = 0) -> dict:
        """Bootstrap over images of this metric on `model` (see qdqtorch.eval.bootstrap)."""
        from ..eval import suppress_predictions
        from ..eval.bootstrap import bootstrap_map
        detections, _ = suppress_predictions(self.infer(model), self.eval_set, **self.suppress_kwargs)
        return bootstrap_map(self.eval_set.gt, detections, self.eval_set.image_ids, key=self.key,
                             resamples=resamples, seed=seed).to_dict()

    def __call__(self, model: nn.Module) -> float:
        return self.score(self.infer(model))
