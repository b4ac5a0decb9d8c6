"""Calibration: collect activation statistics over data, then turn them (and the weights) into amax values."""
from __future__ import annotations

import itertools
from typing import Any, Callable, Iterable, Mapping, Optional, Union

import torch
from torch import nn
from tqdm.auto import tqdm

from ..calib import AMAX_METHODS, HistogramCalibrator, MaxCalibrator, calibrator_for, check_amax_method, weight_amax
from ..nn import GRIDS, CalibrationError, TensorQuantizer, preserve_quantizer_state
from .control import named_quantizers, weight_quantizer_ids
from ..errors import UsageError

__all__ = ["AMAX_METHODS", "calibrate", "calibrate_weights", "collect_stats", "compute_amax", "run_batch",
           "use_histogram_calibrators"]


def _to_device(batch: Any, device: torch.device) -> Any:
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, (list, tuple)):
        return type(batch)(_to_device(b, device) for b in batch)
    if isinstance(batch, Mapping):
        return {k: _to_device(v, device) for k, v in batch.items()}
    return batch


def run_batch(model: nn.Module, batch: Any, device: torch.device, preprocess: Optional[Callable] = None) -> Any:
    """Forward one batch: a tensor is the input; a tuple/list's first item is the input (the rest, e.g. labels, is
    ignored); a dict is passed as keyword arguments. A `preprocess(batch)` result that is a tuple is unpacked."""
    if preprocess is not None:
        batch = preprocess(batch)
        batch = _to_device(batch, device)
        return model(*batch) if isinstance(batch, tuple) else (model(**batch) if isinstance(batch, Mapping)
                                                                else model(batch))
    batch = _to_device(batch, device)
    if isinstance(batch, torch.Tensor):
        return model(batch)
    if isinstance(batch, (list, tuple)):
        if not batch:
            raise UsageError("collect_stats: the data yielded an empty tuple/list")
        return model(batch[0])
    if isinstance(batch, Mapping):
        return model(**batch)
    raise TypeError(f"collect_stats: batches must be tensors, tuples/lists or dicts, got {type(batch).__name__}; "
                    "pass preprocess= to turn them into model inputs")


def model_device(model: nn.Module) -> torch.device:
    """The device of the model's first parameter or buffer (CPU for a model with neither)."""
    tensor = next(itertools.chain(model.parameters(), model.buffers()), None)
    return tensor.device if tensor is not None else torch.device("cpu")


def _activation_quantizers(model: nn.Module):
    weights = weight_quantizer_ids(model)
    return [(n, q) for n, q in named_quantizers(model) if id(q) not in weights]


def _calibratable(model: nn.Module):
    """Enabled activation quantizers that have a calibrator and no fixed amax in their descriptor."""
    return [(n, q) for n, q in _activation_quantizers(model)
            if q.is_enabled and q.calibrator is not None and q.desc.amax is None]


def use_histogram_calibrators(model: nn.Module, num_bins: int = 2048) -> int:
    """Give every per-tensor activation quantizer that has a max calibrator a histogram calibrator instead."""
    count = 0
    for _, q in _activation_quantizers(model):
        if isinstance(q.calibrator, MaxCalibrator) and q.axis is None:
            q.calibrator = HistogramCalibrator(q.num_bits, None, q.unsigned, num_bins=num_bins)
            count += 1
    return count


@torch.no_grad()
def collect_stats(model: nn.Module, data: Iterable, num_batches: Optional[int] = None, *,
                  device: Union[str, torch.device, None] = None, preprocess: Optional[Callable] = None,
                  progress: bool = True) -> int:
    """Feed batches through the float model (quantization off) while activation quantizers record statistics.

    Weight quantizers are skipped here (their amax comes from the weights in `compute_amax`). Modes and the
    train/eval flag are restored afterwards, also on error. Returns the number of batches fed.
    """
    device = torch.device(device) if device is not None else model_device(model)
    activations = [q for _, q in _calibratable(model)]
    if not activations:
        raise CalibrationError("collect_stats: the model has no enabled activation quantizer with a calibrator; "
                               "run quantize_model first")
    was_training = model.training
    fed = 0
    with preserve_quantizer_state(model) as quantizers:
        try:
            for q in quantizers:
                q.disable()
            for q in activations:
                q.set_mode(enabled=True, quant=False, calib=True)
            model.eval()
            total = num_batches
            if total is None and hasattr(data, "__len__"):
                total = len(data)
            for batch in tqdm(itertools.islice(data, num_batches), total=total, desc="calibrating", unit="batch",
                              disable=not progress):
                run_batch(model, batch, device, preprocess)
                fed += 1
        finally:
            model.train(was_training)
    if fed == 0:
        raise CalibrationError("collect_stats: the calibration data yielded no batch; check the data source")
    return fed


def compute_amax(model: nn.Module, method: str = "max", *, weight_method: str = "max", strict: bool = True,
                 progress: bool = True, grid: str = "symmetric", **kwargs: Any) -> None:
    """Set every quantizer's amax: activations from their calibrators by `method` (max, entropy, mse, percentile;
    kwargs such as percentile=99.99, start_bin, stride go to the histogram search), weights from the weight tensors
    by `weight_method` (max, mse, percentile, admm). `grid="shifted"` gives almost one-sided activations (SiLU
    outputs, images) a shifted grid that uses all 255 codes; `export_onnx` keeps it TensorRT-compatible.

    Raises one CalibrationError naming every activation quantizer whose calibrator saw no data (strict).
    """
    check_amax_method(method, "compute_amax")
    check_grid(grid, "compute_amax")
    activations = _calibratable(model)
    if calibrator_for(method) == "histogram" and activations and not any(
            isinstance(q.calibrator, HistogramCalibrator) for _, q in activations):
        raise CalibrationError(f"compute_amax: method {method!r} needs histogram statistics but every activation "
                               "quantizer has a max calibrator; use QuantDescriptor(calibrator='histogram') or "
                               "qdqtorch.calibrate(..., method=...), which selects the calibrator for you")
    missing = []
    for name, q in tqdm(activations, desc=f"amax ({method})", unit="quantizer", disable=not progress):
        if q.calibrator.num_collected == 0:
            missing.append(name)
            continue
        hist_kwargs = kwargs if isinstance(q.calibrator, HistogramCalibrator) else {}
        q.load_calib_amax(method, grid=grid, **hist_kwargs)
    if missing and strict:
        raise CalibrationError(f"compute_amax: the forward pass never reached {len(missing)} quantizer(s) while "
                               f"collecting statistics, so their calibrators saw no data: {missing}. Feed data that "
                               "exercises these layers, ignore them in the config, or pass strict=False.")
    calibrate_weights(model, weight_method, percentile=kwargs.get("percentile", 99.99))


@torch.no_grad()
def calibrate_weights(model: nn.Module, method: str = "max", **kwargs: Any) -> int:
    """amax of every enabled weight quantizer from its layer's weight (max, mse, percentile or admm)."""
    count = 0
    for module in model.modules():
        q = getattr(module, "_weight_quantizer", None)
        if not isinstance(q, TensorQuantizer) or not q.is_enabled or q.desc.amax is not None:
            continue
        q.amax = weight_amax(module.weight, q.axis, q.num_bits, q.unsigned, method, **kwargs)
        count += 1
    return count


def check_grid(grid: str, caller: str) -> None:
    """`grid` must be one of `GRIDS` (before any data is read)."""
    if grid not in GRIDS:
        raise UsageError(f"{caller}: unknown grid {grid!r}; choose one of {', '.join(GRIDS)}")


def prepare_calibrators(model: nn.Module, method: str, caller: str) -> None:
    """Check `method`, give activation quantizers the calibrator it needs, and empty every calibrator."""
    check_amax_method(method, caller)
    if calibrator_for(method) == "histogram":
        use_histogram_calibrators(model)
    for _, q in named_quantizers(model):
        if q.calibrator is not None:
            q.calibrator.reset()


def calibrate(model: nn.Module, data: Iterable, num_batches: Optional[int] = None, *, method: str = "max",
              weight_method: str = "max", device: Union[str, torch.device, None] = None,
              preprocess: Optional[Callable] = None, progress: bool = True, grid: str = "symmetric",
              **kwargs: Any) -> None:
    """collect_stats + compute_amax in one call; a histogram `method` switches per-tensor activation quantizers
    from max to histogram calibrators first."""
    check_grid(grid, "calibrate")
    prepare_calibrators(model, method, "calibrate")
    collect_stats(model, data, num_batches, device=device, preprocess=preprocess, progress=progress)
    compute_amax(model, method, weight_method=weight_method, progress=progress, grid=grid, **kwargs)
