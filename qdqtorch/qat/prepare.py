"""prepare_qat: turn a quantized, calibrated model into one a training loop can fine-tune with fake quant."""
from __future__ import annotations

import difflib
import re
from dataclasses import dataclass, field
from typing import Collection, List, Optional, Sequence, Union

from torch import nn

from ..nn import CalibrationError, TensorQuantizer
from ..quantize import named_quantizers, uncalibrated_quantizers
from ..errors import UsageError

LearnAmax = Union[bool, str, Sequence[str]]


def _keep_eval(module: nn.Module, args) -> None:
    """Forward pre-hook of a frozen BatchNorm: run with running statistics, whatever model.train() said.

    A module-level function (not a lambda) so models holding the hook still pickle and deepcopy.
    """
    module.training = False


def _batchnorms(model: nn.Module) -> List[tuple]:
    return [(n, m) for n, m in model.named_modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


def freeze_batchnorm(model: nn.Module, *, only: Optional[Collection[str]] = None) -> List[str]:
    """Make every BatchNorm (or those named in `only`) normalize with its running statistics and stop updating
    them, also after `model.train()`; its affine weight and bias still train. Returns the names of the layers frozen."""
    frozen = []
    for name, bn in _batchnorms(model):
        if only is not None and name not in only:
            continue
        if _keep_eval not in bn._forward_pre_hooks.values():
            bn.register_forward_pre_hook(_keep_eval)
        bn.train(False)
        frozen.append(name)
    return frozen


def unfreeze_batchnorm(model: nn.Module) -> int:
    """Undo `freeze_batchnorm`: BatchNorm layers follow the model's train/eval flag again. Returns how many."""
    count = 0
    for _, bn in _batchnorms(model):
        keys = [k for k, hook in bn._forward_pre_hooks.items() if hook is _keep_eval]
        for k in keys:
            del bn._forward_pre_hooks[k]
        count += bool(keys)
    return count


def is_batchnorm_frozen(module: nn.Module) -> bool:
    """True when `freeze_batchnorm` froze this BatchNorm layer."""
    return _keep_eval in module._forward_pre_hooks.values()


def _select(quantizers: List[tuple], learn_amax: LearnAmax) -> List[tuple]:
    """Quantizers chosen by `learn_amax`: all of them (True), none (False), or those whose name a regex matches."""
    if learn_amax is False or learn_amax is None:
        return []
    if learn_amax is True:
        return quantizers
    patterns = [learn_amax] if isinstance(learn_amax, str) else list(learn_amax)
    names = [n for n, _ in quantizers]
    chosen = []
    for pattern in patterns:
        if not isinstance(pattern, str):
            raise TypeError(f"prepare_qat: learn_amax takes True/False or regex strings, got {pattern!r}")
        try:
            regex = re.compile(pattern)
        except re.error as exc:
            raise UsageError(f"prepare_qat: learn_amax: invalid regex {pattern!r}: {exc}") from None
        hits = [(n, q) for n, q in quantizers if regex.match(n)]
        if not hits:
            near = difflib.get_close_matches(pattern.replace(".*", ""), names, n=3, cutoff=0.0)
            raise UsageError(f"prepare_qat: learn_amax pattern {pattern!r} matched no enabled, calibrated quantizer "
                             f"(re.match against quantizer names); nearest names: {near}")
        chosen += [h for h in hits if all(h[1] is not c[1] for c in chosen)]
    return chosen


def make_amax_learnable(quantizer: TensorQuantizer) -> None:
    """Turn a calibrated quantizer's `_amax` buffer into an nn.Parameter with the same value, name and device."""
    if quantizer.amax is None:
        raise CalibrationError(f"{quantizer.label}: cannot learn amax before it has one; calibrate first")
    if not quantizer.learn_amax:
        quantizer.desc = quantizer.desc.replace(learn_amax=True)
    if not quantizer.is_learnable:
        quantizer.amax = quantizer.amax  # re-registers `_amax` as a Parameter (TensorQuantizer._set_amax)


def make_amax_fixed(quantizer: TensorQuantizer) -> None:
    """Undo `make_amax_learnable`: `_amax` becomes a buffer again, holding its current (possibly learned) value
    (negatives a last optimizer step left become 0: either way the quantizer's scale is floored at `AMAX_FLOOR`)."""
    if quantizer.learn_amax:
        quantizer.desc = quantizer.desc.replace(learn_amax=False)
    if quantizer.is_learnable:  # re-registers `_amax` as a buffer (TensorQuantizer._set_amax)
        quantizer.amax = quantizer.amax.detach().clamp_min(0.0)


@dataclass
class QATReport:
    """What `prepare_qat` did: quantizers that learn amax, BatchNorm layers frozen, trainable parameter count."""

    quantizers: int = 0
    learned_amax: List[str] = field(default_factory=list)
    frozen_batchnorm: List[str] = field(default_factory=list)
    trainable_parameters: int = 0

    def __str__(self) -> str:
        lines = [f"QAT: {self.quantizers} enabled quantizers, {len(self.learned_amax)} learn amax, "
                 f"{len(self.frozen_batchnorm)} BatchNorm layers frozen, "
                 f"{self.trainable_parameters:,} trainable parameter values"]
        lines += [f"  learns amax: {n}" for n in self.learned_amax[:20]]
        if len(self.learned_amax) > 20:
            lines.append(f"  ... and {len(self.learned_amax) - 20} more")
        return "\n".join(lines)


def prepare_qat(model: nn.Module, *, freeze_bn: bool = True, learn_amax: LearnAmax = False,
                train_weights: bool = True) -> QATReport:
    """Put a quantized, calibrated model in training mode for QAT (in place); call before building the optimizer
    and before wrapping in DistributedDataParallel, since it may register new parameters.

    - `freeze_bn`: BatchNorm layers normalize with their running statistics and stop updating them (see
      `freeze_batchnorm`); False lets them use batch statistics as in ordinary training.
    - `learn_amax`: which enabled quantizers learn their amax (LSQ-style gradient): True for all, False for none,
      or regexes matched (re.match) against quantizer names such as `model.3.conv._input_quantizer`.
      Their calibrated `_amax` buffer becomes a Parameter under the same state_dict key.
    - `train_weights`: set requires_grad on every parameter (loaded detectors often come frozen).
    Quantizers without learned amax keep their calibrated amax; inputs get the clipped straight-through gradient.
    """
    if isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
        raise TypeError("prepare_qat: got a DistributedDataParallel/DataParallel wrapper; call prepare_qat on the "
                        "plain model first, then wrap it (DDP must see the parameters prepare_qat creates)")
    enabled = [(n, q) for n, q in named_quantizers(model) if q.is_enabled]
    if not enabled:
        raise CalibrationError("prepare_qat: the model has no enabled quantizer; run qdqtorch.quantize_model and "
                               "qdqtorch.calibrate first")
    missing = uncalibrated_quantizers(model)
    if missing:
        raise CalibrationError(f"prepare_qat: {len(missing)} enabled quantizer(s) have no amax: {missing[:10]}"
                               f"{'...' if len(missing) > 10 else ''}. Calibrate the model (qdqtorch.calibrate) or "
                               "load a calibration before QAT")
    report = QATReport(quantizers=len(enabled))
    if train_weights:
        model.requires_grad_(True)
    for name, q in _select(enabled, learn_amax):
        make_amax_learnable(q)
        q.amax.requires_grad_(True)
        report.learned_amax.append(name)
    model.train()
    if freeze_bn:
        report.frozen_batchnorm = freeze_batchnorm(model)
    else:
        unfreeze_batchnorm(model)
    report.trainable_parameters = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return report


def amax_parameters(model: nn.Module) -> List[nn.Parameter]:
    """The learned amax Parameters of every quantizer in the model."""
    return [q.amax for _, q in named_quantizers(model) if q.is_learnable]


def param_groups(model: nn.Module, lr: float, *, amax_lr: Optional[float] = None,
                 weight_decay: float = 0.0) -> List[dict]:
    """Optimizer parameter groups: the model's trainable parameters with `weight_decay`, and learned amax values
    in their own group with `amax_lr` (default `lr`) and no weight decay, which would otherwise shrink them."""
    amax_ids = {id(p) for p in amax_parameters(model)}
    weights = [p for p in model.parameters() if p.requires_grad and id(p) not in amax_ids]
    amaxes = [p for p in model.parameters() if p.requires_grad and id(p) in amax_ids]
    if not weights and not amaxes:
        raise UsageError("param_groups: the model has no trainable parameter; call prepare_qat first "
                         "(train_weights=True, or learn_amax)")
    groups = [{"params": weights, "lr": lr, "weight_decay": weight_decay}] if weights else []
    if amaxes:
        groups.append({"params": amaxes, "lr": lr if amax_lr is None else amax_lr, "weight_decay": 0.0})
    return groups
