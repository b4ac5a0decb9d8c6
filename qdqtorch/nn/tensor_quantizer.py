"""TensorQuantizer: the module that calibrates and fake-quantizes one tensor."""
from __future__ import annotations

import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Iterable, Iterator, List, Mapping, Optional, Union

import torch
from torch import nn

from ..calib import HistogramCalibrator, MaxCalibrator, NonFiniteError, effective_method
from ..descriptor import QUANT_DESC_8BIT_PER_TENSOR, QuantDescriptor
from ..tensor_quant import (AMAX_FLOOR, amax_to_scale, fake_tensor_quant, learnable_fake_tensor_quant, quant_bounds,
                            tensor_quant)
from ..errors import QdqtorchError

Calibrator = Union[MaxCalibrator, HistogramCalibrator]

GRIDS = ("symmetric", "shifted")
"""Activation grids `load_calib_amax` can fit: TensorRT's symmetric one, or a shifted one (zero point) for tensors
that are almost one-sided, such as SiLU outputs (>= -0.28), whose symmetric grid leaves the negative codes unused."""

SHIFT_MAX_NEGATIVE = 0.5
"""A tensor gets a shifted grid only when its most negative value is above -0.5 x its positive range end: there the
shift buys at least a quarter of the step; tensors closer to symmetric keep zero point 0."""


class CalibrationError(QdqtorchError, RuntimeError):
    """A quantizer could not be calibrated or used (no data, NaN/Inf, no amax); the message names it."""


def make_calibrator(desc: QuantDescriptor) -> Calibrator:
    """The calibrator a descriptor asks for (`desc.calibrator_kind`)."""
    if desc.calibrator_kind == "histogram":
        return HistogramCalibrator(desc.num_bits, desc.axis, desc.unsigned)
    return MaxCalibrator(desc.num_bits, desc.axis, desc.unsigned)


@dataclass(frozen=True)
class QuantizerMode:
    """What a quantizer does in forward: nothing when not `enabled`; else feeds its calibrator when `calib` and
    fake-quantizes when `quant`."""

    enabled: bool = True
    quant: bool = True
    calib: bool = False


@dataclass(frozen=True)
class QuantizerSnapshot:
    """A quantizer's mode and, when taken with `amax=True`, its amax (`TensorQuantizer.snapshot` / `restore`)."""

    mode: QuantizerMode
    amax: Optional[torch.Tensor] = None
    has_amax: bool = False  # amax was saved (None then means "had no amax")
    zero_point: int = 0


class TensorQuantizer(nn.Module):
    """Owns one tensor's amax (buffer `_amax`; empty until calibrated), its calibrator and its mode.

    Modes: disabled (identity), calibrating (collects statistics), quantizing (fake quant with amax). The default
    is quantizing; `collect_stats` switches to calibrating and back.
    """

    _zero_point_value: int = 0  # also for quantizers unpickled from before zero points existed

    def __init__(self, desc: Union[QuantDescriptor, Mapping[str, Any]] = QUANT_DESC_8BIT_PER_TENSOR,
                 name: str = "", disabled: bool = False) -> None:
        super().__init__()
        self.desc = QuantDescriptor.from_dict(desc)
        self.name = name
        self._disabled = disabled
        self._if_quant = True
        self._if_calib = False
        self._calibrator: Optional[Calibrator] = make_calibrator(self.desc)
        self.register_buffer("_amax", torch.empty(0))
        self.register_buffer("_zero_point", torch.zeros((), dtype=torch.int32))  # saved with the model
        self._zero_point_value = 0  # the same as a Python int: forward reads it without a device sync
        self._export_warned = False
        if self.desc.amax is not None:
            self.amax = self.desc.amax

    # ---- descriptor views ---------------------------------------------------------------------------------------
    num_bits = property(lambda self: self.desc.num_bits, doc="Bit width.")
    axis = property(lambda self: self.desc.axis, doc="Per-channel axis, None for per-tensor.")
    unsigned = property(lambda self: self.desc.unsigned, doc="Unsigned range [0, 2**bits - 1].")
    narrow_range = property(lambda self: self.desc.narrow_range, doc="Signed range excludes -2**(bits-1).")
    learn_amax = property(lambda self: self.desc.learn_amax, doc="amax is an nn.Parameter trained with the model.")
    fake_quant = property(lambda self: self.desc.fake_quant, doc="Output dequantized values (else integer codes).")

    @property
    def label(self) -> str:
        """Name used in messages."""
        return self.name or "<unnamed TensorQuantizer>"

    # ---- amax ---------------------------------------------------------------------------------------------------
    @property
    def amax(self) -> Optional[torch.Tensor]:
        """Calibrated amax (scalar, or 1-D per channel), None before calibration."""
        return None if self._amax.numel() == 0 else self._amax

    @amax.setter
    def amax(self, value: Any) -> None:
        self._set_amax(value)

    def _set_amax(self, value: Any) -> None:
        device = self._amax.device
        t = torch.as_tensor(value, dtype=torch.float32).detach().clone().to(device)
        if t.numel() > 0:
            if not torch.isfinite(t).all() or (t < 0).any():
                raise CalibrationError(f"{self.label}: amax must be finite and >= 0, got {t.flatten()[:8].tolist()}")
            if self.axis is None:
                if t.numel() != 1:
                    raise CalibrationError(f"{self.label}: per-tensor quantizer got an amax with {t.numel()} values")
                t = t.reshape(())
            else:
                t = t.reshape(-1)
        self._buffers.pop("_amax", None)
        self._parameters.pop("_amax", None)
        if self.learn_amax and t.numel() > 0:
            self.register_parameter("_amax", nn.Parameter(t))
        else:
            self.register_buffer("_amax", t)
        zero_point = self._buffers.pop("_zero_point", None)
        if zero_point is not None:  # keep the state_dict order `_amax`, `_zero_point` whichever kind `_amax` is
            self._buffers["_zero_point"] = zero_point

    # ---- zero point (shifted grid) ----------------------------------------------------------------------------
    @property
    def zero_point(self) -> int:
        """Integer zero point of a per-tensor signed grid: 0 is TensorRT's symmetric grid; non-zero moves the same
        codes to cover ``[min_bound - zp, max_bound - zp] * scale`` (a shifted grid for one-sided tensors, fitted by
        `load_calib_amax(grid="shifted")`). `export_onnx` folds it into the consumers: TensorRT sees zero point 0."""
        return self._zero_point_value

    @zero_point.setter
    def zero_point(self, value: int) -> None:
        value = int(value)
        if value:
            lo, hi = quant_bounds(self.num_bits, self.unsigned, self.narrow_range)
            if self.axis is not None or self.unsigned:
                kind = "unsigned" if self.unsigned else f"per-channel, axis {self.axis}"
                raise CalibrationError(f"{self.label}: a zero point needs a signed per-tensor quantizer "
                                       f"(this one is {kind})")
            if not lo <= value <= hi:
                raise CalibrationError(f"{self.label}: zero point {value} is outside the code range "
                                       f"[{lo}, {hi}]")
        self._zero_point.fill_(value)
        self._zero_point_value = value

    def _save_to_state_dict(self, destination, prefix, keep_vars):
        super()._save_to_state_dict(destination, prefix, keep_vars)
        key = prefix + "_amax"
        if self.is_learnable and not keep_vars and key in destination:
            # saved right after an optimizer step, a learned amax may be below 0, which the quantizer treats as its
            # floor (forward projects it); save a value that loads anywhere and quantizes the same
            destination[key] = destination[key].clamp_min(0.0)

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                              error_msgs):
        key = prefix + "_amax"
        if key in state_dict:  # amax is created lazily: adopt the saved shape, keep this module's device
            self._set_amax(state_dict[key])
        zp_key = prefix + "_zero_point"
        if zp_key not in state_dict:  # saved before zero points existed: the symmetric grid
            state_dict[zp_key] = torch.zeros((), dtype=torch.int32)
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                                      error_msgs)
        self._zero_point_value = int(self._zero_point)

    def load_calib_amax(self, method: Optional[str] = None, strict: bool = True, grid: str = "symmetric",
                        **kwargs: Any) -> None:
        """Set amax (and the zero point) from the calibrator's statistics.

        `method` (an amax method of `qdqtorch.calib.methods`) applies to histogram calibrators; the descriptor's
        `calib_method` wins over it (`effective_method`); max calibrators always give the running max. `grid`
        "shifted" fits a shifted grid (`zero_point`) where the tensor is almost one-sided (see `GRIDS`).
        """
        if grid not in GRIDS:
            raise CalibrationError(f"{self.label}: unknown grid {grid!r}; choose one of {GRIDS}")
        calib = self._calibrator
        if calib is None:
            raise CalibrationError(f"{self.label}: has no calibrator")
        method = effective_method(method, self.desc.calib_method)
        if grid == "shifted" and self._fit_shifted_grid(calib, method, **kwargs):
            return
        amax = calib.compute_amax(method, **kwargs) if isinstance(calib, HistogramCalibrator) else calib.compute_amax()
        if amax is None:
            if strict:
                raise CalibrationError(f"{self.label}: its calibrator saw no data: the forward pass never reached "
                                       "this quantizer while collecting statistics. Check that the calibration "
                                       "batches exercise this layer, or ignore/disable it.")
            return
        dead = int((amax == 0).sum())
        if dead:
            where = "" if amax.dim() == 0 else f" on {dead} of {amax.numel()} channels"
            warnings.warn(f"{self.label}: amax is 0{where} (the calibration data never made it non-zero); those "
                          f"values quantize to 0 with a tiny positive scale", stacklevel=2)
        self.amax = amax
        self.zero_point = 0

    def _fit_shifted_grid(self, calib: Calibrator, method: str, **kwargs: Any) -> bool:
        """Set a shifted grid [min, end] when the tensor is almost one-sided: `end` is the calibration method's
        range end for a one-sided grid (all 2**bits - 1 steps on the positive side), min the most negative value
        seen. Returns False (nothing set) for a tensor that gets the symmetric grid."""
        low = calib.min_value
        if self.axis is not None or self.unsigned or low is None:
            return False
        end = calib.compute_amax(method, unsigned=True, **kwargs) if isinstance(calib, HistogramCalibrator) \
            else calib.compute_amax()
        high, low = float(end) if end is not None else 0.0, min(low, 0.0)
        if high <= 0.0 or -low > SHIFT_MAX_NEGATIVE * high:
            return False
        qmin, qmax = quant_bounds(self.num_bits, self.unsigned, self.narrow_range)
        scale = (high - low) / (qmax - qmin)
        self.amax = scale * qmax
        self.zero_point = max(qmin, min(0, round(qmin - low / scale)))
        return True

    # ---- modes ----------------------------------------------------------------------------------------------------
    @property
    def mode(self) -> QuantizerMode:
        """The current mode (enabled, quant, calib) as an immutable value."""
        return QuantizerMode(enabled=not self._disabled, quant=self._if_quant, calib=self._if_calib)

    def set_mode(self, mode: Optional[QuantizerMode] = None, *, enabled: Optional[bool] = None,
                 quant: Optional[bool] = None, calib: Optional[bool] = None) -> None:
        """Set the mode: a whole `QuantizerMode`, and/or single flags (None leaves a flag as it is)."""
        base = mode if mode is not None else self.mode
        new = QuantizerMode(enabled=base.enabled if enabled is None else bool(enabled),
                            quant=base.quant if quant is None else bool(quant),
                            calib=base.calib if calib is None else bool(calib))
        if new.calib and not self._if_calib and self._calibrator is None:
            raise CalibrationError(f"{self.label}: has no calibrator to enable")
        self._disabled, self._if_quant, self._if_calib = not new.enabled, new.quant, new.calib

    def snapshot(self, amax: bool = False) -> QuantizerSnapshot:
        """The current mode (and a copy of amax when `amax`), for `restore`."""
        if not amax:
            return QuantizerSnapshot(self.mode)
        value = self.amax
        return QuantizerSnapshot(self.mode, None if value is None else value.detach().clone(), True, self.zero_point)

    def restore(self, snapshot: QuantizerSnapshot) -> None:
        """Put back a `snapshot()`: the mode, and amax if it was saved (in place when the shape is unchanged, so a
        learned amax stays the same Parameter object)."""
        self.set_mode(snapshot.mode)
        if not snapshot.has_amax:
            return
        self.zero_point = snapshot.zero_point
        current = self.amax
        if snapshot.amax is None:
            self._set_amax(torch.empty(0))
        elif current is not None and current.shape == snapshot.amax.shape:
            with torch.no_grad():
                current.copy_(snapshot.amax.to(current.device))
        else:
            self._set_amax(snapshot.amax)

    def enable(self) -> None:
        """Turn the quantizer on (quantize and/or calibrate per its flags)."""
        self._disabled = False

    def disable(self) -> None:
        """Make the quantizer an identity."""
        self._disabled = True

    def enable_quant(self) -> None:
        """Fake-quantize in forward."""
        self._if_quant = True

    def disable_quant(self) -> None:
        """Do not fake-quantize in forward."""
        self._if_quant = False

    def enable_calib(self) -> None:
        """Feed every forward input to the calibrator."""
        self.set_mode(calib=True)

    def disable_calib(self) -> None:
        """Stop feeding the calibrator."""
        self._if_calib = False

    @property
    def is_enabled(self) -> bool:
        """False when disabled (identity)."""
        return not self._disabled

    # ---- calibrator -------------------------------------------------------------------------------------------
    @property
    def calibrator(self) -> Optional[Calibrator]:
        """The statistics collector (MaxCalibrator or HistogramCalibrator), None if the quantizer has none."""
        return self._calibrator

    @calibrator.setter
    def calibrator(self, value: Optional[Calibrator]) -> None:
        if value is not None and not isinstance(value, (MaxCalibrator, HistogramCalibrator)):
            raise TypeError(f"{self.label}: calibrator must be a MaxCalibrator or HistogramCalibrator, "
                            f"got {type(value).__name__}")
        if value is None:
            self._if_calib = False
        self._calibrator = value

    @property
    def is_learnable(self) -> bool:
        """True when amax is an nn.Parameter (trained with the model)."""
        return isinstance(self._amax, nn.Parameter)

    # ---- forward ----------------------------------------------------------------------------------------------
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self._disabled:
            return x
        if self._if_calib:
            self._collect(x)
        if not self._if_quant:
            return x
        amax = self.amax
        if amax is None:
            raise CalibrationError(f"{self.label}: quantizing with no amax. Calibrate the model first "
                                   "(qdqtorch.calibrate / collect_stats + compute_amax), load a calibration, "
                                   "or disable this quantizer.")
        if self.axis is not None and amax.numel() != x.shape[self.axis]:
            raise CalibrationError(f"{self.label}: amax has {amax.numel()} channels but the tensor has "
                                   f"{x.shape[self.axis]} along axis {self.axis} (shape {tuple(x.shape)})")
        zp = self.zero_point
        if not self.fake_quant:
            return tensor_quant(x, amax, self.num_bits, self.unsigned, self.narrow_range, self.axis, zp)[0]
        if torch.onnx.is_in_onnx_export():
            return self._export_forward(x, amax)
        if isinstance(amax, nn.Parameter):
            # an optimizer step may have pushed a learned amax below the floor, where it would pass no gradient (stuck
            # at a grid of zeros); project it back. `.data`: no autograd version bump, gradient accumulation works
            amax.data.clamp_(min=AMAX_FLOOR)
            if torch.is_grad_enabled():
                return learnable_fake_tensor_quant(x, amax, self.num_bits, self.unsigned, self.narrow_range, self.axis,
                                                   zp)
        return fake_tensor_quant(x, amax, self.num_bits, self.unsigned, self.narrow_range, self.axis, zp)

    def _collect(self, x: torch.Tensor) -> None:
        try:
            self._calibrator.collect(x)
        except NonFiniteError:
            bad = int((~torch.isfinite(x)).sum())
            raise CalibrationError(f"{self.label}: calibration input holds {bad} NaN/Inf values; check the "
                                   "calibration data and preprocessing (or the layers before this one)") from None

    def _export_forward(self, x: torch.Tensor, amax: torch.Tensor) -> torch.Tensor:
        """Emit ONNX QuantizeLinear/DequantizeLinear (8-bit) with constant scales and the zero point (0 unless a
        shifted grid; `export_onnx` then folds it away, see `qdqtorch.export.zero_points`).

        ONNX int8 Q/DQ clamps to [-128, 127]; TensorRT uses scale = amax/127 the same way, so the narrow range only
        differs for inputs below -amax. Other bit widths have no opset-13 Q/DQ and export as float arithmetic.
        """
        if self.num_bits != 8:
            if not self._export_warned:
                warnings.warn(f"{self.label}: {self.num_bits}-bit quantizers export as float ops, not Q/DQ",
                              stacklevel=2)
                self._export_warned = True
            return learnable_fake_tensor_quant(x, amax.detach(), self.num_bits, self.unsigned, self.narrow_range,
                                               self.axis, self.zero_point)
        lo, hi = (0, 255) if self.unsigned else (-128, 127)
        scale_values = amax_to_scale(amax, 255 if self.unsigned else 127).tolist()
        scale = torch.tensor(scale_values, dtype=torch.float32, device=x.device)
        if self.axis is None:
            zero = torch.tensor(self.zero_point, dtype=torch.int32, device=x.device)
            return torch.fake_quantize_per_tensor_affine(x, scale, zero, lo, hi)
        zero = torch.zeros(scale.numel(), dtype=torch.int32, device=x.device)
        return torch.fake_quantize_per_channel_affine(x, scale, zero, self.axis % x.dim(), lo, hi)

    def extra_repr(self) -> str:
        if self._disabled:
            return f"disabled {self.num_bits}bit"
        parts = [f"{self.num_bits}bit", "unsigned" if self.unsigned else ("narrow" if self.narrow_range else "full"),
                 "per-tensor" if self.axis is None else f"axis={self.axis}"]
        amax = self.amax
        if amax is None:
            parts.append("amax=None")
        elif amax.dim() == 0:
            parts.append(f"amax={float(amax):.4g}")
            if self.zero_point:
                parts.append(f"zero_point={self.zero_point}")
        else:
            parts.append(f"amax=[{float(amax.min()):.4g}, {float(amax.max()):.4g}]({amax.numel()})")
        if self.learn_amax:
            parts.append("learn_amax")
        if self._calibrator is not None:
            parts.append("calib=" + ("histogram" if isinstance(self._calibrator, HistogramCalibrator) else "max"))
        parts.append("quant" if self._if_quant else "no-quant")
        if self._if_calib:
            parts.append("calibrating")
        return " ".join(parts)


def _quantizers(target: Union[nn.Module, Iterable[TensorQuantizer]]) -> List[TensorQuantizer]:
    modules = target.modules() if isinstance(target, nn.Module) else target
    seen: dict = {}
    for m in modules:
        if isinstance(m, TensorQuantizer):
            seen.setdefault(id(m), m)
    return list(seen.values())


@contextmanager
def preserve_quantizer_state(target: Union[nn.Module, Iterable[TensorQuantizer]],
                             amax: bool = False) -> Iterator[List[TensorQuantizer]]:
    """Snapshot every quantizer of a model (or the given quantizers) and restore them on exit, also on error.

    Yields the quantizers. Restores the modes; also the amax values when `amax` is True.
    """
    quantizers = _quantizers(target)
    saved = [(q, q.snapshot(amax=amax)) for q in quantizers]
    try:
        yield quantizers
    finally:
        for q, snap in reversed(saved):
            q.restore(snap)
