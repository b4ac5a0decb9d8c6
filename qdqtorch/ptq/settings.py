"""PTQSettings: everything one PTQ run needs, as plain data that round-trips through YAML/JSON."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Union

from ..fieldtypes import check_field_types
from ..quantize import AMAX_METHODS, QuantConfig, load_config_file
from ..rules import PLACEMENTS
from ..calib import WEIGHT_METHODS
from ..nn import GRIDS
from ..errors import UsageError

DEFAULT_RULES = "tensorrt"  # the placement one ships (README, BENCHMARKS.md §5); --rules none opts out
DEFAULT_IMGSZ = 640         # when neither the settings nor the checkpoint give one

# How the exported graph's input shape is fixed. "static": batch 1 and imgsz x imgsz, so Ultralytics
# (YOLO("model.qdq.onnx").predict / .val) letterboxes every image to imgsz, and TensorRT builds a static engine;
# "dynamic-batch": a symbolic batch axis (TensorRT needs an optimization profile; Ultralytics takes a dynamic axis
# to mean any height/width too, which this graph rejects).
ONNX_SHAPES = ("static", "dynamic-batch")


RECOVER_CHOICES = ("adaround", "gptq", "nearest", "ranges", "adaround+ranges", "gptq+ranges", "nearest+ranges",
                   "distill")
LAYERWISE_RECOVER_IMAGES = 16   # default recover_images of every method but distill (which fits on num_calib)


@dataclass
class PTQSettings:
    """One post-training-quantization job: model, data, calibration, evaluation and export options.

    `quant` holds a QuantConfig dict (input/weight descriptors, modules, overrides, ignore); `ignore` adds
    regexes on top of it and of the model's default float layers (e.g. Ultralytics' DFL). `preprocess` holds
    `qdqtorch.data.Preprocess` fields (xquant's color_format / mean_value / std_value / preprocess hook); imgsz and
    stride come from `imgsz` and the model.
    """

    model: Optional[str] = None               # required: a checkpoint, .safetensors detector or model yaml
    data: Optional[str] = None                # required: a dataset yaml or image folder with YOLO labels
    out: str = "runs/ptq"
    repo: Optional[str] = None
    calib_data: Optional[str] = None          # default: the dataset's train split
    calib_split: str = "train"
    eval_split: str = "val"
    num_calib: int = 128
    num_eval: Optional[int] = None
    batch: int = 16
    imgsz: Optional[int] = None               # default: what the checkpoint records, else 640
    calib_method: str = "mse"                # best measured on YOLOv5n (BENCHMARKS.md §2); "max" is the fastest
    percentile: float = 99.99
    grid: str = "symmetric"                   # activation grid (GRIDS): "shifted" gives one-sided tensors (SiLU
                                              # outputs) all 255 codes; export folds the shift (BENCHMARKS.md §8e)
    weight_method: str = "max"
    recover: Optional[str] = None             # label-free recovery after calibration (RECOVER_CHOICES): adaround,
                                              # gptq, nearest (weights), ranges (activation amax), "w+ranges", or
                                              # distill (short label-free QAT from the float model, fine_tune)
    recover_images: Optional[int] = None      # calibration images the recovery fits on (default 16; distill:
                                              # num_calib)
    recover_epochs: int = 8                   # distill: passes over the recover_images
    recover_learn_amax: bool = False          # distill: also learn every quantizer's amax (BENCHMARKS.md §8h)
    bias_correction: bool = False             # with recover: also shift biases to cancel each layer's mean error
    ignore: List[str] = field(default_factory=list)
    rules: Optional[str] = DEFAULT_RULES      # placement: "tensorrt" (what one ships), "tensorrt-int8-residual",
                                              # or "none" / None for plain replacement
    fold_bn: bool = False
    fuse_reparam: bool = True                 # RepConv blocks as deployed (one conv); False: training form (QAT)
    device: str = "cpu"
    export: bool = True
    opset: Optional[int] = None               # None: the lowest opset >= 13 with every operator the model uses
    onnx_shape: str = "static"                # "static" (batch 1, imgsz: Ultralytics, static TensorRT engine) or
                                              # "dynamic-batch" (symbolic batch, fixed imgsz: TensorRT profiles)
    check: bool = False                       # fail on Q/DQ checker errors
    ort_eval: bool = False                    # score the exported ONNX with ONNX Runtime too
    jitter_draws: int = 0                     # rescore INT8 in this many one-ulp bias copies: the figures' grain
    skip_float_eval: bool = False
    allow_empty: bool = False                 # go on when the float model detects nothing on the evaluation images
    conf_thres: float = 0.001
    iou_thres: float = 0.65
    max_det: int = 300
    scorer: str = "fast"                      # the same numbers as "pycocotools" (tested to 1e-4), much faster
    workers: int = 0
    preprocess: Dict[str, Any] = field(default_factory=dict)   # qdqtorch.data.Preprocess fields (color, mean, ...)
    quant: Dict[str, Any] = field(default_factory=dict)
    note: Optional[str] = None                # one line saying what this run is, shown in report.md / summary.json

    def __post_init__(self) -> None:
        if self.calib_method not in AMAX_METHODS:
            raise UsageError(f"calib_method must be one of {AMAX_METHODS}, got {self.calib_method!r}")
        if self.grid not in GRIDS:
            raise UsageError(f"grid must be one of {GRIDS}, got {self.grid!r}")
        if self.weight_method not in WEIGHT_METHODS:
            raise UsageError(f"weight_method must be one of {WEIGHT_METHODS}, got {self.weight_method!r}")
        if self.onnx_shape not in ONNX_SHAPES:
            raise UsageError(f"onnx_shape must be one of {ONNX_SHAPES}, got {self.onnx_shape!r}")
        if self.rules == "none":
            self.rules = None
        if self.rules not in (None, *PLACEMENTS):
            raise UsageError(f"rules must be one of {PLACEMENTS}, got {self.rules!r}")
        if self.recover not in (None, *RECOVER_CHOICES):
            raise UsageError(f"recover must be one of {RECOVER_CHOICES} or unset, got {self.recover!r}")
        for name in ("num_calib", "batch", "imgsz", "recover_images", "recover_epochs"):
            if getattr(self, name) is not None and int(getattr(self, name)) <= 0:
                raise UsageError(f"{name} must be positive, got {getattr(self, name)!r}")
        if int(self.jitter_draws) < 0:
            raise UsageError(f"jitter_draws must be 0 (off) or a number of draws, got {self.jitter_draws!r}")
        if self.bias_correction and self.recover in (None, "ranges", "distill"):
            raise UsageError(f"bias_correction works with a weight recovery (adaround, gptq, nearest), not with "
                             f"recover={self.recover!r}")
        if self.recover_learn_amax and self.recover != "distill":
            raise UsageError(f"recover_learn_amax works with recover='distill', not with recover={self.recover!r}")
        if isinstance(self.ignore, str):
            self.ignore = [self.ignore]

    @property
    def recovery_images(self) -> int:
        """Images the recovery fits on: recover_images, else num_calib for distill and 16 for the others."""
        if self.recover_images is not None:
            return int(self.recover_images)
        return int(self.num_calib) if self.recover == "distill" else LAYERWISE_RECOVER_IMAGES

    def to_dict(self) -> dict:
        """JSON-able dict of every setting."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], where: str = "PTQ settings") -> "PTQSettings":
        """Build from a dict; unknown keys are an error naming them (dashes are accepted for underscores)."""
        data = {k.replace("-", "_"): v for k, v in data.items()}
        valid = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - valid)
        if unknown:
            raise UsageError(f"{where}: unknown key(s) {unknown}; valid keys are {sorted(valid)}")
        check_field_types(cls, data, where)
        if data.get("quant"):
            QuantConfig.from_dict(data["quant"], where=f"{where}: quant")  # a bad quant section fails now, named
        try:
            return cls(**data)
        except (TypeError, ValueError) as exc:
            raise UsageError(f"{where}: {exc}") from None

    @classmethod
    def from_file(cls, path: Union[str, Path], **overrides: Any) -> "PTQSettings":
        """Settings from a YAML/JSON file; a file holding only QuantConfig keys is taken as the `quant` section."""
        data = load_config_file(path)
        quant_keys = {"input", "weight", "modules", "overrides"}
        if data and set(data) <= quant_keys | {"ignore"} and set(data) & quant_keys:
            data = {"quant": data}
        return cls.from_dict({**data, **overrides}, where=str(path))
