"""refine_ranges: after calibration, learn every activation quantizer's amax (LSQ-style, straight-through rounding)
so that the quantized network's outputs match the float model's on calibration images, without labels.

Why: with the weights in float, INT8 activations alone cost most of YOLO's fidelity (BENCHMARKS.md §8), and
per-tensor calibration (max/mse/entropy) picks each range for its own tensor's error, not for what the network
outputs. Here all ranges are fitted together to the network's output error: the float model is the teacher, the
loss is each output tensor's error energy relative to its float energy (1/SNR), summed. With `drop` > 0 each
activation quantizer is, per element, skipped with that probability during training (QDrop, Wei et al. 2022),
which keeps a few calibration images from being overfitted.

The learned values land in the quantizers through their public `amax` setter, so fake quant, the exported Q/DQ
ONNX and a saved calibration reproduce them. One quantizer object serves every site of a tied group, so tied
scales stay tied; disabled (ignored) quantizers and weight quantizers are left alone.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Iterable, List, Optional, Union

import torch
from torch import nn
from tqdm.auto import tqdm

from ..nn import TensorQuantizer
from ..quantize import disable_quantization, named_quantizers, uncalibrated_quantizers, weight_quantizer_ids
from ..tensor_quant import learnable_fake_tensor_quant
from .recover import RecoveryError, gather_images


@dataclass
class RangeReport:
    """What refine_ranges did: output error before/after (relative to float energy), the amax changes, seconds."""

    images: int
    iters: int
    error_before: float = 0.0
    error_after: float = 0.0
    amax: Dict[str, List[float]] = field(default_factory=dict)   # quantizer name -> [calibrated, learned]
    seconds: float = 0.0

    def to_dict(self) -> dict:
        """JSON-able dict."""
        return dict(self.__dict__)

    def __str__(self) -> str:
        ratios = [b / a for a, b in self.amax.values() if a > 0]
        spread = f", amax x{min(ratios):.2f}..x{max(ratios):.2f}" if ratios else ""
        return (f"range refinement: {len(self.amax)} activation quantizers on {self.images} images, {self.iters} "
                f"steps in {self.seconds:.1f}s; output error {self.error_before:.3g} -> {self.error_after:.3g}"
                f"{spread}")


def _leaves(output: Any) -> List[torch.Tensor]:
    """The tensors of a (nested tuple/list/dict) model output, in order."""
    if isinstance(output, torch.Tensor):
        return [output]
    items = list(output.values()) if isinstance(output, dict) else output
    return [t for item in items for t in _leaves(item)] if isinstance(items, (tuple, list)) else []


def _output_error(quant: List[torch.Tensor], ref: List[torch.Tensor]) -> torch.Tensor:
    """Sum over output tensors of error energy / float energy (1/SNR)."""
    total = quant[0].new_zeros(())
    for q, f in zip(quant, ref):
        total = total + (q - f).pow(2).mean() / f.pow(2).mean().clamp_min(1e-12)
    return total


class _Learner:
    """Forward hooks that replace each trainable quantizer's output by a differentiable fake quant of a learned amax."""

    def __init__(self, quantizers: Dict[str, TensorQuantizer], drop: float, generator: torch.Generator) -> None:
        self.quantizers = quantizers
        self.log_scale = {name: torch.zeros_like(q.amax, dtype=torch.float32, requires_grad=True)
                          for name, q in quantizers.items()}
        self.start = {name: q.amax.detach().float().clone() for name, q in quantizers.items()}
        self.by_id = {id(q): name for name, q in quantizers.items()}
        self.drop, self.generator, self.training = drop, generator, False

    def amax(self, name: str) -> torch.Tensor:
        return self.start[name] * torch.exp(self.log_scale[name])

    def hook(self, quantizer: TensorQuantizer, args: tuple, output: Any) -> Any:
        if not self.training or not isinstance(output, torch.Tensor) or output is args[0]:
            return None    # not training, or a tied quantizer passing on a tensor it has just produced
        x = args[0]
        q = quantizer
        y = learnable_fake_tensor_quant(x, self.amax(self.by_id[id(q)]).to(x.device), q.num_bits, q.unsigned,
                                        q.narrow_range, q.axis, q.zero_point)
        if self.drop > 0:
            keep = torch.rand(x.shape, generator=self.generator).to(x.device) >= self.drop
            y = torch.where(keep, y, x)
        return y


def refine_ranges(model: nn.Module, data: Iterable, *, num_images: int = 32, iters: int = 100, lr: float = 5e-3,
                  batch_size: int = 8, drop: float = 0.0, device: Union[str, torch.device, None] = None,
                  progress: bool = True, seed: int = 0,
                  preprocess: Optional[Callable[[Any], Any]] = None) -> RangeReport:
    """Learn the amax of every enabled activation quantizer of a calibrated model so that the network's outputs
    match the float model's on `num_images` images from `data` (label-free), by `iters` Adam steps on minibatches
    of `batch_size` (learning rate `lr` on log(amax)). Returns a RangeReport; on error or Ctrl-C the calibrated
    amax values are put back. Weights (and weight quantizers) are not changed. `preprocess` maps a batch to the
    image tensor (as in `gather_images`).
    """
    start_time = time.perf_counter()
    if device is None:
        first = next(iter(model.parameters()), None)
        device = first.device if first is not None else torch.device("cpu")
    device = torch.device(device)
    weights = weight_quantizer_ids(model)
    quantizers = {name: q for name, q in named_quantizers(model)
                  if id(q) not in weights and q.is_enabled and q.fake_quant}
    missing = [name for name in uncalibrated_quantizers(model) if name in quantizers]
    if missing:
        raise RecoveryError(f"refine_ranges: {len(missing)} enabled quantizer(s) have no amax ({missing[:5]}); "
                            "calibrate the model (qdqtorch.calibrate) first")
    if not quantizers:
        raise RecoveryError("refine_ranges: the model has no enabled activation quantizer; run "
                            "qdqtorch.quantize_model and calibrate first")
    images = gather_images(data, num_images, device, who="refine_ranges", preprocess=preprocess)
    n = images.shape[0]
    generator = torch.Generator().manual_seed(seed)
    was_training = model.training
    grads = [p.requires_grad for p in model.parameters()]
    learner = _Learner(quantizers, drop, generator)
    handles = [q.register_forward_hook(learner.hook) for q in quantizers.values()]
    report = RangeReport(n, iters)
    flushed = torch.set_flush_denormal(True)   # tiny gradients as denormals slow CPU backward passes ~10x
    try:
        model.eval()
        for p in model.parameters():
            p.requires_grad_(False)
        with torch.no_grad():
            with disable_quantization(model):
                targets = [[t.detach() for t in _leaves(model(images[i:i + batch_size]))]
                           for i in range(0, n, batch_size)]
            report.error_before = _mean_error(model, images, targets, batch_size)
        params = list(learner.log_scale.values())
        opt = torch.optim.Adam(params, lr=lr)
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, iters)
        batches = max(1, math.ceil(n / batch_size))
        bar = tqdm(range(iters), desc="range refinement", unit="step", disable=not progress)
        learner.training = True
        for step in bar:
            b = int(torch.randint(batches, (1,), generator=generator))
            x = images[b * batch_size:(b + 1) * batch_size]
            loss = _output_error([t for t in _leaves(model(x))], targets[b])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            if step % 10 == 0:
                bar.set_postfix(loss=f"{loss.item():.3g}")
        bar.close()
        learner.training = False
        for name, q in quantizers.items():
            before = learner.start[name]
            q.amax = learner.amax(name).detach()
            report.amax[name] = [float(before.max()), float(q.amax.max())]
        with torch.no_grad():
            report.error_after = _mean_error(model, images, targets, batch_size)
        if report.error_after > report.error_before:   # never leave the model worse than calibrated on its images
            for name, q in quantizers.items():
                q.amax = learner.start[name]
                report.amax[name][1] = report.amax[name][0]
            report.error_after = report.error_before
    except BaseException:
        for name, q in quantizers.items():
            q.amax = learner.start[name]
        raise
    finally:
        if flushed:
            torch.set_flush_denormal(False)
        learner.training = False
        for h in handles:
            h.remove()
        for p, g in zip(model.parameters(), grads):
            p.requires_grad_(g)
        model.train(was_training)
    report.seconds = time.perf_counter() - start_time
    return report


def _mean_error(model: nn.Module, images: torch.Tensor, targets: List[List[torch.Tensor]], batch_size: int) -> float:
    errors = [float(_output_error(_leaves(model(images[i:i + batch_size])), targets[k]))
              for k, i in enumerate(range(0, images.shape[0], batch_size))]
    return sum(errors) / len(errors)


__all__ = ["RangeReport", "refine_ranges"]
