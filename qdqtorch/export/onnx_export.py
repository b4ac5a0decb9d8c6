"""export_onnx: write a calibrated fake-quantized model as an ONNX Q/DQ graph that TensorRT builds as INT8.

Which torch exporter: the TorchScript (tracing) exporter, ``torch.onnx.export(..., dynamo=False)``. Since torch
2.9 the default is the torch.export-based ("dynamo") exporter; torch 2.14 still ships the TorchScript one (with a
deprecation warning), and it is the one used here because, as checked with torch 2.14.1 / onnx 1.23:
  * it maps ``fake_quantize_per_tensor_affine`` / ``fake_quantize_per_channel_affine`` straight to
    QuantizeLinear/DequantizeLinear at the requested opset (by default the lowest that has every operator, 13
    for CNNs): int8 zero point 0 for the range
    [-128, 127], ``axis`` on per-channel pairs, scales folded to constants;
  * the dynamo exporter also emits Q/DQ for them, but only at opset 18: converting down to 13 fails
    ("No Adapter From Version $16 for Identity") and the file silently stays at opset 18; its dynamic batch also
    needs ``dynamic_shapes`` instead of ``dynamic_axes``;
  * tracing handles models with Python-side control flow (YOLO heads), and ``dynamic_axes`` gives a symbolic
    batch dimension.
If a future torch drops the TorchScript exporter, export_onnx says so instead of failing deep inside torch.

Quantized weights are written already on their int8 grid (see `_weights_on_the_grid`), so every ONNX consumer
(onnxruntime, TensorRT) recovers exactly the integer codes PyTorch used.
"""
from __future__ import annotations

import inspect
import re
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

import onnx
import torch
from torch import nn

from ..atomic import atomic_output
from ..nn.tensor_quantizer import TensorQuantizer
from ..errors import QdqtorchError, UsageError
from .zero_points import ZeroPointError, fold_zero_points

MIN_OPSET = 13  # per-channel QuantizeLinear/DequantizeLinear (axis attribute) needs opset 13
MAX_OPSET = 20  # highest opset the automatic choice climbs to (TensorRT 10 parses up to 20)
# torch's UnsupportedOperatorError says "Support for this operator was added in version N"
_ADDED_IN = re.compile(r"operator '([^']+)'.*added in version (\d+)", re.DOTALL)


class ExportError(QdqtorchError, RuntimeError):
    """The model cannot be exported as a Q/DQ graph as it is; the message says which part and what to do."""


def _quantizer_problems(model: nn.Module) -> list[str]:
    """Names of enabled quantizers that would not export as calibrated Q/DQ (no amax, still calibrating)."""
    problems = []
    for name, q in model.named_modules():
        if not isinstance(q, TensorQuantizer) or not q.is_enabled:
            continue
        label = q.name or name
        if q.mode.calib:
            problems.append(f"{label} (still collecting calibration statistics: run compute_amax/calibrate first)")
        elif q.mode.quant and q.amax is None:
            problems.append(f"{label} (enabled but not calibrated: no amax)")
    return problems


def _warn_unsupported(model: nn.Module) -> None:
    """Warn about enabled quantizers that export, but not as the int8 Q/DQ TensorRT builds."""
    unsigned = [q.name or n for n, q in model.named_modules()
                if isinstance(q, TensorQuantizer) and q.is_enabled and q.num_bits == 8 and q.unsigned]
    if unsigned:
        warnings.warn(f"export_onnx: {len(unsigned)} unsigned quantizer(s) export as uint8 Q/DQ, which TensorRT "
                      f"rejects (it needs int8 with zero point 0): {', '.join(unsigned[:10])}"
                      + (" ..." if len(unsigned) > 10 else ""), stacklevel=3)


def _flat_tensors(output: Any) -> list[torch.Tensor]:
    """Tensors of a (nested) model output in the order the ONNX exporter lists them as graph outputs."""
    if isinstance(output, torch.Tensor):
        return [output]
    if isinstance(output, Mapping):
        return [t for v in output.values() for t in _flat_tensors(v)]
    if isinstance(output, (tuple, list)):
        return [t for v in output for t in _flat_tensors(v)]
    return []


def _check_device(model: nn.Module, args: tuple[torch.Tensor, ...]) -> None:
    param = next(iter(model.parameters()), None)
    for i, a in enumerate(args):
        if not isinstance(a, torch.Tensor):
            raise TypeError(f"export_onnx: sample input {i} is a {type(a).__name__}, expected a torch.Tensor")
        if param is not None and a.device != param.device:
            raise UsageError(f"export_onnx: sample input {i} is on {a.device} but the model is on {param.device}; "
                             "move one of them")


def _torchscript_export(model: nn.Module, args: tuple, path: Path, opset: int, input_names: list[str],
                        output_names: list[str], dynamic_axes: dict | None) -> None:
    if "dynamo" not in inspect.signature(torch.onnx.export).parameters:
        kwargs: dict[str, Any] = {}  # torch < 2.5: the TorchScript exporter is the only one
    else:
        kwargs = {"dynamo": False}
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*legacy TorchScript-based ONNX export.*")
        warnings.filterwarnings("ignore", message=".*feature will be removed.*")
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        try:
            torch.onnx.export(model, args, str(path), opset_version=opset, input_names=input_names,
                              output_names=output_names, dynamic_axes=dynamic_axes, do_constant_folding=True,
                              export_params=True, **kwargs)
        except TypeError as exc:
            if "dynamo" in str(exc):
                raise ExportError(f"this torch ({torch.__version__}) has no TorchScript ONNX exporter "
                                  "(dynamo=False), which qdqtorch needs to emit Q/DQ nodes") from exc
            raise


def _needed_opset(exc: Exception) -> tuple[str, int] | None:
    """(operator, opset that added it) when `exc` is torch's "operator not supported at this opset" error."""
    if type(exc).__name__ != "UnsupportedOperatorError":
        return None
    found = _ADDED_IN.search(str(exc))
    return (found.group(1), int(found.group(2))) if found else None


def _export_at_lowest_opset(model: nn.Module, args: tuple, path: Path, opset: int | None, input_names: list[str],
                            output_names: list[str], dynamic_axes: dict | None) -> int:
    """Export at `opset`, or (None) at the lowest opset >= MIN_OPSET that has every operator the model uses.

    Why climb instead of always using a high opset: TensorRT and older runtimes accept opset 13 most widely, and
    only some models (attention through scaled_dot_product_attention needs 14) need more. Returns the opset used.
    """
    current = MIN_OPSET if opset is None else opset
    while True:
        try:
            _torchscript_export(model, args, path, current, input_names, output_names, dynamic_axes)
            return current
        except Exception as exc:
            needed = _needed_opset(exc)
            if needed is None:
                raise
            op, version = needed
            if opset is not None or version <= current or version > MAX_OPSET:
                raise ExportError(f"export_onnx: the model uses {op}, which ONNX has only from opset {version}, "
                                  f"but opset {current} was requested: pass opset={version} or higher (or leave "
                                  "opset unset to pick it automatically)") from None
            warnings.warn(f"export_onnx: {op} needs ONNX opset {version}; exporting at opset {version} instead "
                          f"of {current}", stacklevel=4)
            current = version


@contextmanager
def _weights_on_the_grid(model: nn.Module) -> Iterator[int]:
    """Temporarily replace each 8-bit-quantized weight by its fake-quantized value (codes times scale).

    Why: PyTorch's fake-quant kernel rounds ``w * (1/scale)`` while ONNX QuantizeLinear (and TensorRT) round
    ``w / scale``; for weights that sit on a rounding tie (common with FP16-trained checkpoints, whose weights and
    per-channel amax have few mantissa bits) the two give codes one step apart. Values already on the grid quantize
    to the same code under any rounding, so the exported weights reproduce PyTorch's exactly. Yields the count.
    """
    saved: list[tuple[torch.Tensor, torch.Tensor]] = []
    seen: set[int] = set()
    try:
        with torch.no_grad():
            for module in model.modules():
                q = getattr(module, "_weight_quantizer", None)
                weight = getattr(module, "weight", None)
                if (not isinstance(q, TensorQuantizer) or not isinstance(weight, torch.Tensor) or id(weight) in seen
                        or not q.is_enabled or not getattr(q, "_if_quant", True) or q.num_bits != 8
                        or not q.fake_quant or q.amax is None):
                    continue
                seen.add(id(weight))
                gridded = q(weight)
                saved.append((weight, weight.detach().clone()))
                weight.copy_(gridded)
        yield len(saved)
    finally:
        with torch.no_grad():
            for weight, original in saved:
                weight.copy_(original)


def _dynamic_axes(names: list[str], batch: bool, extra: Mapping[str, Mapping[int, str]] | None
                  ) -> dict[str, dict[int, str]] | None:
    """torch's dynamic_axes: axis 0 "batch" of every input/output when `batch`, plus the `extra` named axes."""
    unknown = sorted(set(extra or {}) - set(names))
    if unknown:
        raise UsageError(f"export_onnx: dynamic_axes names {unknown}, which are not among the inputs/outputs {names}")
    axes: dict[str, dict[int, str]] = {n: ({0: "batch"} if batch else {}) for n in names}
    for name, more in (extra or {}).items():
        axes[name].update({int(k): str(v) for k, v in more.items()})
    axes = {n: a for n, a in axes.items() if a}
    return axes or None


def _restore_modes(model: nn.Module, modes: dict[str, bool]) -> None:
    for name, module in model.named_modules():
        if name in modes:
            module.training = modes[name]


def export_onnx(model: nn.Module, sample: torch.Tensor | Sequence[torch.Tensor], path: str | Path, *,
                opset: int | None = None, dynamic_batch: bool = True,
                dynamic_axes: Mapping[str, Mapping[int, str]] | None = None, input_names: Sequence[str] = ("images",),
                output_names: Sequence[str] = ("output0",), metadata: Mapping[str, Any] | None = None) -> Path:
    """Export a calibrated fake-quant model to an ONNX Q/DQ graph (eval mode, dynamic batch, metadata props).

    `sample` is one input tensor or a tuple of them (its batch size does not matter with dynamic_batch; with
    dynamic_batch=False every shape is the sample's, what a static TensorRT engine and Ultralytics' fixed-size
    letterboxing want). `dynamic_axes` names more symbolic axes per input/output name, e.g.
    ``{"tokens": {1: "sequence"}}``, on top of the batch axis. `opset` None picks the lowest opset >= 13 that has
    every operator the model uses, with a warning when that is above 13. Metadata values are written with str()
    (Ultralytics reads them back with ast.literal_eval). Outputs beyond `output_names` get the next free names
    output1, output2, ...; the model's train/eval modes are restored.
    """
    if opset is not None and opset < MIN_OPSET:
        raise UsageError(f"export_onnx: opset {opset} is too old; per-channel Q/DQ needs opset >= {MIN_OPSET}")
    args = (sample,) if isinstance(sample, torch.Tensor) else tuple(sample)
    if len(input_names) != len(args):
        raise UsageError(f"export_onnx: {len(args)} sample input(s) but {len(input_names)} input name(s) "
                         f"{list(input_names)}")
    _check_device(model, args)
    problems = _quantizer_problems(model)
    if problems:
        raise ExportError("export_onnx: cannot export, these quantizers have no usable amax:\n  "
                          + "\n  ".join(problems)
                          + "\nCalibrate the model (qdqtorch.calibrate), load a calibration, or disable them.")
    _warn_unsupported(model)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)

    # written beside `path` and renamed when complete: a failed or interrupted export never leaves a truncated file
    with atomic_output(path) as tmp:
        modes = {name: m.training for name, m in model.named_modules()}
        model.eval()
        try:
            with torch.no_grad():
                try:
                    outputs = _flat_tensors(model(*args))  # dry run: clear errors before tracing, and count outputs
                except Exception as exc:
                    shapes = [tuple(a.shape) for a in args]
                    raise ExportError(f"export_onnx: the model failed on the sample input(s) of shape {shapes}: "
                                      f"{type(exc).__name__}: {exc}") from exc
                if not outputs:
                    raise ExportError("export_onnx: the model returned no tensors")
                if len(output_names) > len(outputs):
                    raise UsageError(f"export_onnx: {len(output_names)} output names for {len(outputs)} output(s)")
                out_names = list(output_names)
                extra = (f"output{i}" for i in range(len(outputs) * 2) if f"output{i}" not in output_names)
                out_names += [next(extra) for _ in range(len(outputs) - len(output_names))]
                axes = _dynamic_axes([*input_names, *out_names], dynamic_batch, dynamic_axes)
                with _weights_on_the_grid(model):
                    _export_at_lowest_opset(model, args, tmp, opset, list(input_names), out_names, axes)
        finally:
            _restore_modes(model, modes)

        proto = onnx.load(str(tmp))
        try:
            fold_zero_points(proto)  # shifted grids: TensorRT accepts only zero point 0
        except ZeroPointError as exc:
            raise ExportError(f"export_onnx: {exc}") from None
        if metadata:
            for key, value in metadata.items():
                entry = proto.metadata_props.add()
                entry.key, entry.value = str(key), value if isinstance(value, str) else str(value)
        try:
            onnx.checker.check_model(proto)
        except onnx.checker.ValidationError as exc:
            raise ExportError(f"export_onnx: the exported graph {path} fails onnx.checker: {exc}") from exc
        onnx.save(proto, str(tmp))
    return path
