"""COCO bbox evaluation of YOLO detectors: ground truth, decoding + NMS, a cached EvalSet, two equal scorers, and
fidelity (the float model's own detections as ground truth: no labels needed), and the grain of a figure
(jitter: the same model rescored with its biases moved by one ulp)."""
from .coco_ids import COCO80_NAMES, COCO80_TO_91, coco80_to_91, coco91_to_80, is_coco80
from .decode import (LAYOUTS, Candidates, decode_predictions, infer_layout, nms_candidates, non_max_suppression,
                     suppress, xywh_to_xyxy)
from .classes import class_mismatch
from .eval_set import EvalSet, has_labels
from .evaluate import EvalResult, Predictions, detect, evaluate, predict, suppress_predictions
from .fast_scorer import FastCocoScorer
from .fidelity import (FidelityReference, FidelityResult, OutputError, fidelity, float_reference, output_errors,
                       outputs_line)
from .jitter import JitterResult, jitter, perturb_biases
from .ground_truth import label_path_for, load_coco_json, read_yolo_labels, yolo_to_coco
from .scorers import SCORERS, make_scorer
from .scoring import Detections, PycocotoolsScorer, ScoreResult

__all__ = [
    "COCO80_NAMES", "COCO80_TO_91", "Candidates", "Detections", "EvalResult", "EvalSet", "FastCocoScorer", "LAYOUTS",
    "FidelityReference", "FidelityResult", "OutputError", "class_mismatch", "fidelity", "float_reference",
    "has_labels", "JitterResult", "jitter", "output_errors", "outputs_line", "perturb_biases",
    "PycocotoolsScorer", "SCORERS", "ScoreResult", "coco80_to_91", "coco91_to_80", "decode_predictions", "detect",
    "evaluate", "infer_layout", "is_coco80", "label_path_for", "load_coco_json", "make_scorer", "nms_candidates",
    "non_max_suppression", "predict", "Predictions", "read_yolo_labels", "suppress", "suppress_predictions",
    "xywh_to_xyxy", "yolo_to_coco",
]
