"""QuantDescriptor: the plain-data description of how one tensor is quantized."""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from typing import Any, Mapping, Optional, Sequence, Union

from .errors import UsageError
from .calib.methods import AMAX_METHODS, CALIBRATORS, calibrator_for

AmaxValue = Union[float, Sequence[float], None]


@dataclass(frozen=True)
class QuantDescriptor:
    """How to quantize one tensor: bits, per-tensor or per-channel axis, range, calibrator, optional fixed amax.

    Field names follow pytorch-quantization where they mean the same. Immutable: derive variants with
    `desc.replace(num_bits=16)`. Calibration has two keys that mean one thing each (names from
    `qdqtorch.calib.methods`):
    - `calib_method`: the amax method fixed for this tensor (max, entropy, mse, percentile), which wins over the one
      passed to `compute_amax`/`calibrate` (per-layer overrides use it); None: the call decides.
    - `calibrator`: the statistics collector, "max" or "histogram"; None: the one `calib_method` needs ("max" when
      that is None too). pytorch-quantization's `calib_method="histogram"` is `calibrator="histogram"` here.
    """

    num_bits: int = 8
    axis: Optional[int] = None
    unsigned: bool = False
    narrow_range: bool = True
    calib_method: Optional[str] = None
    amax: AmaxValue = None
    learn_amax: bool = False
    fake_quant: bool = True
    calibrator: Optional[str] = None

    def __post_init__(self) -> None:
        if isinstance(self.num_bits, bool) or not isinstance(self.num_bits, int) or not 2 <= self.num_bits <= 16:
            raise UsageError(f"QuantDescriptor.num_bits must be an int in 2..16, got {self.num_bits!r}")
        if self.axis is not None and (isinstance(self.axis, bool) or not isinstance(self.axis, int)):
            raise UsageError(f"QuantDescriptor.axis must be None (per-tensor) or an int, got {self.axis!r}")
        if self.calib_method == "histogram":
            raise UsageError("QuantDescriptor.calib_method='histogram' is now calibrator='histogram' (calib_method "
                             f"names the amax method only: one of {AMAX_METHODS})")
        if self.calib_method is not None and self.calib_method not in AMAX_METHODS:
            raise UsageError(f"QuantDescriptor.calib_method must be None or one of {AMAX_METHODS}, "
                             f"got {self.calib_method!r}")
        if self.calibrator is not None and self.calibrator not in CALIBRATORS:
            raise UsageError(f"QuantDescriptor.calibrator must be None or one of {CALIBRATORS}, "
                             f"got {self.calibrator!r}")
        needed = calibrator_for(self.calib_method)
        if self.calibrator == "max" and needed != "max":
            raise UsageError(f"QuantDescriptor: calib_method={self.calib_method!r} needs calibrator='histogram', "
                             "got calibrator='max'")
        if self.calibrator_kind == "histogram" and self.axis is not None:
            raise UsageError(f"QuantDescriptor: a histogram calibrator (calib_method={self.calib_method!r}, "
                             f"calibrator={self.calibrator!r}) is per-tensor only; use axis=None, or a max "
                             "calibrator per channel")
        for name in ("unsigned", "narrow_range", "learn_amax", "fake_quant"):
            if not isinstance(getattr(self, name), bool):
                raise UsageError(f"QuantDescriptor.{name} must be a bool, got {getattr(self, name)!r}")
        if self.amax is not None:
            values = [self.amax] if isinstance(self.amax, (int, float)) else list(self.amax)
            if not values or any(not isinstance(v, (int, float)) or not v >= 0 for v in values):
                raise UsageError("QuantDescriptor.amax must be a non-negative number or list of them, "
                                 f"got {self.amax!r}")
            if not isinstance(self.amax, (int, float)):
                object.__setattr__(self, "amax", tuple(float(v) for v in values))

    @property
    def calibrator_kind(self) -> str:
        """The calibrator this tensor gets: `calibrator`, else the one `calib_method` needs."""
        return self.calibrator or calibrator_for(self.calib_method)

    @property
    def max_bound(self) -> int:
        """Largest integer code: 127 for signed 8-bit, 255 for unsigned 8-bit."""
        return (1 << self.num_bits) - 1 if self.unsigned else (1 << (self.num_bits - 1)) - 1

    @property
    def min_bound(self) -> int:
        """Smallest integer code: -127 (narrow) or -128 for signed 8-bit, 0 for unsigned."""
        if self.unsigned:
            return 0
        return -self.max_bound if self.narrow_range else -self.max_bound - 1

    def replace(self, **changes: Any) -> "QuantDescriptor":
        """A copy with some fields changed (validated like the constructor)."""
        return QuantDescriptor.from_dict({**self.to_dict(), **changes})

    def to_dict(self) -> dict:
        """Plain JSON-able dict of all fields."""
        data = dataclasses.asdict(self)
        if isinstance(data["amax"], tuple):
            data["amax"] = list(data["amax"])
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], where: str = "QuantDescriptor") -> "QuantDescriptor":
        """Build from a dict, rejecting unknown keys with the list of valid ones."""
        if isinstance(data, QuantDescriptor):
            return data
        if not isinstance(data, Mapping):
            raise TypeError(f"{where}: expected a mapping of descriptor fields, got {type(data).__name__}")
        valid = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - valid)
        if unknown:
            raise UsageError(f"{where}: unknown descriptor field(s) {unknown}; valid fields are {sorted(valid)}")
        try:
            return cls(**dict(data))
        except ValueError as exc:
            raise UsageError(f"{where}: {exc}") from None

    def to_json(self) -> str:
        """JSON text of `to_dict()`."""
        return json.dumps(self.to_dict())

    @classmethod
    def from_json(cls, text: str) -> "QuantDescriptor":
        """Inverse of `to_json`."""
        return cls.from_dict(json.loads(text))


QUANT_DESC_8BIT_PER_TENSOR = QuantDescriptor(narrow_range=False)
"""Per-tensor signed 8-bit, max calibration: the usual activation (input) quantizer. Full range [-128, 127], as
ONNX QuantizeLinear and TensorRT clamp activations, so fake quant and the deployed engine agree."""

QUANT_DESC_8BIT_HISTOGRAM = QuantDescriptor(narrow_range=False, calibrator="histogram")
"""Per-tensor 8-bit with a histogram calibrator, for entropy / mse / percentile amax."""

QUANT_DESC_8BIT_CONV_WEIGHT_PER_CHANNEL = QuantDescriptor(axis=0)
"""Per-output-channel 8-bit weights of Conv{1,2,3}d (axis 0)."""

QUANT_DESC_8BIT_LINEAR_WEIGHT_PER_ROW = QuantDescriptor(axis=0)
"""Per-output-row 8-bit weights of Linear (axis 0)."""

QUANT_DESC_8BIT_CONVTRANSPOSE_WEIGHT_PER_CHANNEL = QuantDescriptor(axis=1)
"""Per-output-channel 8-bit weights of ConvTranspose{1,2,3}d, whose weight is (in, out/groups, ...): axis 1."""
