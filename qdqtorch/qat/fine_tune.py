"""fine_tune: a short label-free QAT run as a post-calibration recovery step: distill the calibrated fake-quant model
from its own float copy on a few unlabelled images, keep the result only when the distillation loss went down."""
from __future__ import annotations

import copy
import math
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Dict, Iterable, List, Optional, Union

import torch
from torch import nn
from tqdm.auto import tqdm

from ..errors import UsageError
from ..quantize import model_device, named_quantizers
from ..recovery import gather_images
from .distill import Blocks, DistillationLoss, make_teacher
from .prepare import (LearnAmax, freeze_batchnorm, is_batchnorm_frozen, make_amax_fixed,
                      param_groups, prepare_qat, unfreeze_batchnorm)


@dataclass
class FineTuneReport:
    """What `fine_tune` did: images, epochs and settings, the distillation loss on those images before and after
    (no gradient, BatchNorm in eval mode), the mean training loss of each epoch, and whether the result was kept."""

    images: int
    epochs: int
    lr: float = math.nan
    schedule: str = "constant"
    learned_amax: List[str] = field(default_factory=list)
    steps: int = 0
    loss_before: float = math.nan
    loss_after: float = math.nan
    epoch_losses: List[float] = field(default_factory=list)
    kept: bool = True
    seconds: float = 0.0

    def to_dict(self) -> Dict[str, Any]:
        return asdict(self)

    def __str__(self) -> str:
        verdict = "kept" if self.kept else "not lower: the calibrated model was put back"
        amax = f", {len(self.learned_amax)} amax learned" if self.learned_amax else ""
        return (f"fine-tune (distillation from float): {self.epochs} epochs on {self.images} images "
                f"({self.steps} steps, lr {self.lr:g} {self.schedule}{amax}) in {self.seconds:.1f}s, distillation "
                f"loss {self.loss_before:.4g} -> {self.loss_after:.4g} ({verdict})")


def _batches(images: torch.Tensor, batch_size: int, order: Optional[torch.Tensor] = None) -> List[torch.Tensor]:
    idx = order if order is not None else torch.arange(images.shape[0])
    return [images[idx[i:i + batch_size]] for i in range(0, images.shape[0], batch_size)]


SCHEDULES = ("constant", "cosine")


def _schedule(name: str, total_steps: int) -> Callable[[int], float]:
    """The learning-rate factor of each step: cosine decay from 1 to 0 over the run, or 1 throughout."""
    if name == "constant":
        return lambda step: 1.0
    return lambda step: 0.5 * (1.0 + math.cos(math.pi * min(step, total_steps) / total_steps))


def fine_tune(model: nn.Module, data: Iterable, *, epochs: int = 8, num_images: int = 128, batch_size: int = 16,
              lr: float = 1e-5, amax_lr: Optional[float] = None, optimizer: str = "adam",
              learn_amax: LearnAmax = False, freeze_bn: bool = True, blocks: Blocks = "auto",
              block_weight: float = 1.0, output_weight: float = 1.0, schedule: str = "constant", seed: int = 0,
              device: Union[str, torch.device, None] = None, preprocess: Optional[Callable[[Any], Any]] = None,
              on_epoch: Optional[Callable[[int, nn.Module], None]] = None, progress: bool = True) -> FineTuneReport:
    """Fine-tune a quantized, calibrated model in place by distillation from its frozen float copy (per-block MSE
    plus final-output MSE, `DistillationLoss`) on `num_images` unlabelled images from `data`: `epochs` passes in a
    new order each (seeded), Adam (or SGD with momentum 0.9) at `lr` on the weights, `amax_lr` (default 100 x lr)
    on the amax of the quantizers `learn_amax` selects (`prepare_qat`), BatchNorm statistics frozen. `schedule`:
    "constant" learning rates, or "cosine" decay from them to 0 over the run (each step; BENCHMARKS.md §8h: a
    tie with constant on YOLOv5n).

    The quantizers keep their calibration (grid, zero point, and amax unless learned), so the exported Q/DQ ONNX and
    a saved QAT checkpoint reproduce the result. Afterwards the model is as it came in but for the trained values:
    train/eval flag, frozen BatchNorm layers, parameters' requires_grad, and amax buffers (a learned amax is a
    buffer again, holding the learned value). When the distillation loss on the images is not lower than before,
    or on any error or Ctrl-C, the model's state is put back as it was. `preprocess` maps a batch of `data` to the
    image tensor (dict batches need it). `on_epoch(epoch, model)`, called after each epoch (1, 2, ...) without
    gradient, may evaluate or save the model mid-run (BENCHMARKS.md §8i); its train/eval switches are undone.
    """
    if epochs < 1 or num_images < 1 or batch_size < 1:
        raise UsageError(f"fine_tune: epochs, num_images and batch_size must be >= 1, got {epochs}, {num_images}, "
                         f"{batch_size}")
    if schedule not in SCHEDULES:
        raise UsageError(f"fine_tune: schedule must be one of {SCHEDULES}, got {schedule!r}")
    if optimizer not in ("adam", "sgd"):
        raise UsageError(f"fine_tune: optimizer must be 'adam' or 'sgd', got {optimizer!r}")
    start = time.perf_counter()
    device = torch.device(device) if device is not None else model_device(model)
    # on the CPU: batches move to the device per step
    images = gather_images(data, num_images, "cpu", who="fine_tune", preprocess=preprocess)
    report = FineTuneReport(images=images.shape[0], epochs=epochs, lr=lr, schedule=schedule)
    saved_state = copy.deepcopy(model.state_dict())
    saved_grad = {name: p.requires_grad for name, p in model.named_parameters()}
    was_training = model.training
    frozen_before = {name for name, m in model.named_modules() if is_batchnorm_frozen(m)}
    fixed_amax = [(q, q.desc) for _, q in named_quantizers(model) if not q.is_learnable]
    teacher = make_teacher(model).to(device)
    loss_fn: Optional[DistillationLoss] = None
    restore = True
    try:
        report.learned_amax = prepare_qat(model, freeze_bn=freeze_bn, learn_amax=learn_amax).learned_amax
        loss_fn = DistillationLoss(model, teacher, blocks=blocks, block_weight=block_weight,
                                   output_weight=output_weight)
        fixed = _batches(images, batch_size)
        report.loss_before = loss_fn.measure(fixed, device=device)["loss"]
        groups = param_groups(model, lr, amax_lr=amax_lr if amax_lr is not None else lr * 100)
        opt = torch.optim.Adam(groups) if optimizer == "adam" else torch.optim.SGD(groups, momentum=0.9)
        total_steps = epochs * len(fixed)
        scheduler = torch.optim.lr_scheduler.LambdaLR(opt, _schedule(schedule, total_steps))
        generator = torch.Generator().manual_seed(seed)
        bar = tqdm(total=total_steps, desc="fine-tune (distillation)", unit="batch", disable=not progress)
        with bar:
            for _ in range(epochs):
                total = 0.0
                for batch in _batches(images, batch_size, torch.randperm(images.shape[0], generator=generator)):
                    loss = loss_fn(batch.to(device, non_blocking=True))
                    if not torch.isfinite(loss):
                        raise UsageError(f"fine_tune: the distillation loss became {float(loss)} at step "
                                         f"{report.steps + 1}; lower lr (now {lr:g})")
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    opt.step()
                    scheduler.step()
                    total += loss_fn.last["loss"] * batch.shape[0]
                    report.steps += 1
                    bar.update(1)
                    bar.set_postfix(loss=f"{loss_fn.last['loss']:.4g}")
                report.epoch_losses.append(total / images.shape[0])
                if on_epoch is not None:
                    training = model.training
                    with torch.no_grad():
                        on_epoch(len(report.epoch_losses), model)
                    model.train(training)
        report.loss_after = loss_fn.measure(fixed, device=device)["loss"]
        report.kept = report.loss_after < report.loss_before
        restore = not report.kept
    finally:
        if loss_fn is not None:
            loss_fn.remove_hooks()
        unfreeze_batchnorm(model)
        if frozen_before:
            freeze_batchnorm(model, only=frozen_before)
        for q, desc in fixed_amax:
            if q.is_learnable:
                make_amax_fixed(q)
            q.desc = desc
        if restore:
            model.load_state_dict(saved_state)
        for name, p in model.named_parameters():
            p.requires_grad_(saved_grad.get(name, False))
            p.grad = None
        model.train(was_training)
    report.seconds = time.perf_counter() - start
    return report

