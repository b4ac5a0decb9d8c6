"""PTQSettings: everything one PTQ run needs, as plain data that round-trips through YAML/JSON."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Union

from ..fieldtypes import check_field_types
from ..quantize import AMAX_METHODS, RULES, QuantConfig, load_config_file
from ..calib import WEIGHT_METHODS
from ..errors import UsageError

DEFAULT_RULES = "tensorrt"  # the placement one ships (README, BENCHMARKS.md §5); --rules none opts out
DEFAULT_IMGSZ = 640         # when neither the settings nor the checkpoint give one


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
    weight_method: str = "max"
    ignore: List[str] = field(default_factory=list)
    rules: Optional[str] = DEFAULT_RULES      # placement: "tensorrt" (what one ships), "tensorrt-int8-residual",
                                              # or "none" / None for plain replacement
    fold_bn: bool = False
    device: str = "cpu"
    export: bool = True
    opset: int = 13
    check: bool = False                       # fail on Q/DQ checker errors
    ort_eval: bool = False                    # score the exported ONNX with ONNX Runtime too
    skip_float_eval: bool = False
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
        if self.weight_method not in WEIGHT_METHODS:
            raise UsageError(f"weight_method must be one of {WEIGHT_METHODS}, got {self.weight_method!r}")
        if self.rules == "none":
            self.rules = None
        if self.rules not in (None, *RULES):
            raise UsageError(f"rules must be one of {(*RULES, 'none')}, got {self.rules!r}")
        for name in ("num_calib", "batch", "imgsz"):
            if getattr(self, name) is not None and int(getattr(self, name)) <= 0:
                raise UsageError(f"{name} must be positive, got {getattr(self, name)!r}")
        if isinstance(self.ignore, str):
            self.ignore = [self.ignore]

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
