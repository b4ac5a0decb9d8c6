"""Placement configs: the Q/DQ placement step that runs after `quantize_model`, its config object and CLI names."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Optional, Sequence, Union

import torch
from torch import nn

from ..errors import UsageError
from .analysis import RESIDUAL_MODES
from .apply import apply_tensorrt_rules
from .rules_report import RulesReport


@dataclass(frozen=True)
class TensorRTPlacement:
    """TensorRT's Q/DQ placement rules (`apply_tensorrt_rules`). `residual="float"` keeps residual shortcuts float
    (accurate), "int8" quantizes them so that TensorRT fuses each residual Add into its Conv (faster, less accurate)."""

    residual: str = "float"

    def __post_init__(self) -> None:
        if self.residual not in RESIDUAL_MODES:
            raise UsageError(f"TensorRTPlacement: residual must be one of {RESIDUAL_MODES}, got {self.residual!r}")


# the one table from CLI / settings names to placement configs; "none" leaves the placement of quantize_model as is
_BY_NAME: Dict[str, Optional[TensorRTPlacement]] = {
    "tensorrt": TensorRTPlacement(residual="float"),
    "tensorrt-int8-residual": TensorRTPlacement(residual="int8"),
    "none": None,
}
PLACEMENTS = tuple(_BY_NAME)


def placement_from_name(name: Optional[str]) -> Optional[TensorRTPlacement]:
    """The placement config a CLI/settings name stands for; None for "none" or None (no placement step)."""
    if name is None:
        return None
    if name not in _BY_NAME:
        raise UsageError(f"unknown placement {name!r}; use one of {PLACEMENTS}")
    return _BY_NAME[name]


def apply_placement(model: nn.Module, placement: Optional[TensorRTPlacement],
                    example_input: Union[torch.Tensor, Sequence[torch.Tensor], None]) -> Optional[RulesReport]:
    """Apply `placement` to a model `quantize_model` has quantized, before calibration; returns its report, or None
    (and changes nothing) when `placement` is None. The rules trace the model once on `example_input`."""
    if placement is None:
        return None
    if not isinstance(placement, TensorRTPlacement):
        raise TypeError(f"apply_placement: expected a TensorRTPlacement or None, got {type(placement).__name__}; "
                        f"placement_from_name() maps the names {PLACEMENTS}")
    if example_input is None:
        raise UsageError("apply_placement: TensorRT placement traces the model and needs example_input (any input "
                         "batch the model accepts)")
    return apply_tensorrt_rules(model, example_input, residual=placement.residual)
