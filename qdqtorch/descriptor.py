"""QuantDescriptor: the plain-data description of how one tensor is quantized."""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from typing import Any, Mapping, Optional, Sequence, Union

from .errors import UsageError

CALIB_METHODS = ("max", "histogram", "entropy", "mse", "percentile")
HISTOGRAM_CALIB_METHODS = ("histogram", "entropy", "mse", "percentile")

AmaxValue = Union[float, Sequence[float], None]


@dataclass(frozen=True)
class QuantDescriptor:
    """How to quantize one tensor: bits, per-tensor or per-channel axis, range, calibrator, optional fixed amax.

    Field names follow pytorch-quantization so scripts port by changing imports. Immutable: derive variants with
    `desc.replace(num_bits=16)`. `calib_method` is "max" or "histogram" (amax method chosen when calling
    `compute_amax`), or a histogram method fixed for this tensor ("entropy", "mse", "percentile"), which then wins
    over the method passed to `compute_amax` (per-layer overrides use this).
    """

    num_bits: int = 8
    axis: Optional[int] = None
    unsigned: bool = False
    narrow_range: bool = True
    calib_method: str = "max"
    amax: AmaxValue = None
    learn_amax: bool = False
    fake_quant: bool = True

    def __post_init__(self) -> None:
        if isinstance(self.num_bits, bool) or not isinstance(self.num_bits, int) or not 2 <= self.num_bits <= 16:
            raise UsageError(f"QuantDescriptor.num_bits must be an int in 2..16, got {self.num_bits!r}")
        if self.axis is not None and (isinstance(self.axis, bool) or not isinstance(self.axis, int)):
            raise UsageError(f"QuantDescriptor.axis must be None (per-tensor) or an int, got {self.axis!r}")
        if self.calib_method not in CALIB_METHODS:
            raise UsageError(f"QuantDescriptor.calib_method must be one of {CALIB_METHODS}, got {self.calib_method!r}")
        if self.calib_method in HISTOGRAM_CALIB_METHODS and self.axis is not None:
            raise UsageError(f"QuantDescriptor: calib_method={self.calib_method!r} is per-tensor only; "
                             "use axis=None, or calib_method='max' per channel")
        for name in ("unsigned", "narrow_range", "learn_amax", "fake_quant"):
            if not isinstance(getattr(self, name), bool):
                raise UsageError(f"QuantDescriptor.{name} must be a bool, got {getattr(self, name)!r}")
        if self.amax is not None:
            values = [self.amax] if isinstance(self.amax, (int, float)) else list(self.amax)
            if not values or any(not isinstance(v, (int, float)) or not v >= 0 for v in values):
                raise UsageError(f"QuantDescriptor.amax must be a non-negative number or list of them, got {self.amax!r}")
            if not isinstance(self.amax, (int, float)):
                object.__setattr__(self, "amax", tuple(float(v) for v in values))

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

QUANT_DESC_8BIT_HISTOGRAM = QuantDescriptor(narrow_range=False, calib_method="histogram")
"""Per-tensor 8-bit with a histogram calibrator, for entropy / mse / percentile amax."""

QUANT_DESC_8BIT_CONV_WEIGHT_PER_CHANNEL = QuantDescriptor(axis=0)
"""Per-output-channel 8-bit weights of Conv{1,2,3}d (axis 0)."""

QUANT_DESC_8BIT_LINEAR_WEIGHT_PER_ROW = QuantDescriptor(axis=0)
"""Per-output-row 8-bit weights of Linear (axis 0)."""

QUANT_DESC_8BIT_CONVTRANSPOSE_WEIGHT_PER_CHANNEL = QuantDescriptor(axis=1)
"""Per-output-channel 8-bit weights of ConvTranspose{1,2,3}d, whose weight is (in, out/groups, ...): axis 1."""
