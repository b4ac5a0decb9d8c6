"""Fidelity as a two-phase sweep metric: agreement with the float model's own detections (no labels needed), the
metric a sweep uses when the data has no labels or the model's classes are not the dataset's."""
from __future__ import annotations

import hashlib
from typing import Any, Optional

from torch import nn

from ..errors import UsageError
from .metric import Metric

FIDELITY_KEYS = ("map50_95", "map50")


class FidelityMetric(Metric):
    """Fidelity `key` of a model against a FidelityReference (the float detections, computed once); `infer` runs
    the model down to the NMS candidates, `score` suppresses and scores, so scoring overlaps the next inference."""

    def __init__(self, reference: Any, key: str = "map50_95", *, batch_size: int = 16,
                 data: Optional[str] = None) -> None:
        if key not in FIDELITY_KEYS:
            raise UsageError(f"fidelity metric {key!r}: choose one of {FIDELITY_KEYS}")
        self.reference, self.key, self.batch_size = reference, key, batch_size
        es = reference.eval_set
        files = hashlib.sha256("\n".join(str(p) for p in es.paths).encode()).hexdigest()
        h, w = es.preprocess.hw
        description = {"metric": f"fidelity_{key}", "data": data, "num_images": len(es), "images_sha256": files,
                       "imgsz": [h, w], "preprocess": es.preprocess.to_dict(), "reference": reference.describe(),
                       "summary": f"{data or 'images'}: {len(es)} images at {h}x{w}, fidelity {key} (vs "
                                  f"{reference.num_boxes} float detections at conf > "
                                  f"{reference.settings['reference_conf']})"}
        super().__init__(self.__call__, f"fidelity_{key}", True, description)

    @classmethod
    def from_model(cls, model: nn.Module, eval_set: Any, layout: str, key: str = "map50_95", *,
                   batch_size: int = 16, names: Optional[list] = None, allow_empty: bool = False,
                   data: Optional[str] = None, progress: bool = False) -> "FidelityMetric":
        """Build the float reference from `model` with every quantizer switched off (restored afterwards)."""
        from ..eval.fidelity import float_reference
        from ..quantize import disable_quantization
        with disable_quantization(model):
            reference = float_reference(model, eval_set, layout=layout, batch_size=batch_size, names=names,
                                        output_images=0, allow_empty=allow_empty, progress=progress)
        return cls(reference, key, batch_size=batch_size, data=data)

    def infer(self, model: nn.Module) -> Any:
        """The model's NMS candidates over the reference images (the part that needs the model)."""
        from ..eval.fidelity import fidelity_predictions
        return fidelity_predictions(model, self.reference, batch_size=self.batch_size)

    def detections(self, raw: Any) -> Any:
        """Suppressed detections of one inference (for the noise bootstrap)."""
        from ..eval.fidelity import score_fidelity
        return score_fidelity(raw, self.reference)[1]

    def score(self, raw: Any) -> float:
        """Suppression, then the COCO AP of the detections against the float detections."""
        from ..eval.fidelity import score_fidelity
        return float(getattr(score_fidelity(raw, self.reference)[0], self.key))

    def noise(self, model: nn.Module, resamples: int = 200, seed: int = 0) -> dict:
        """Bootstrap over images of this metric on `model` (see qdqtorch.eval.bootstrap)."""
        from ..eval.bootstrap import bootstrap_map
        es = self.reference.eval_set
        return bootstrap_map(es.gt, self.detections(self.infer(model)), es.image_ids, key=self.key,
                             resamples=resamples, seed=seed).to_dict()

    def __call__(self, model: nn.Module) -> float:
        return self.score(self.infer(model))


def sweep_metric_name(requested: str, *, labelled: bool, mismatch: Optional[str]) -> str:
    """The metric a sweep uses: `requested` ("map50_95", "map50", "fidelity" or "module:function"), except that COCO
    mAP falls back to fidelity (with a warning) when the images have no labels or the model's classes are not the
    dataset's: mAP differences would be noise."""
    import warnings
    if requested not in ("map50_95", "map50") or (labelled and mismatch is None):
        return requested
    why = "the evaluation images have no labels" if not labelled else "the model's classes are not the dataset's"
    warnings.warn(f"--metric {requested}: {why}, so the sweep uses --metric fidelity (agreement with the float "
                  f"model's own detections) instead", stacklevel=2)
    return "fidelity"
