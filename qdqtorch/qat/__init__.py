"""Quantization-aware training: prepare a calibrated model, distill it from its float copy, checkpoint it.

Typical loop (inside a training repository)::

    quantize_model(model, config); calibrate(model, loader)
    teacher = make_teacher(model)                       # frozen float copy, before any weight changes
    prepare_qat(model, freeze_bn=True, learn_amax=False)
    criterion = DistillationLoss(model, teacher)        # per-block + final-output MSE, no labels
    optimizer = torch.optim.SGD(param_groups(model, lr=1e-5), momentum=0.9)
    for images in loader:
        loss = criterion(images); optimizer.zero_grad(); loss.backward(); optimizer.step()
    save_qat_checkpoint(model, "qat.safetensors")       # load_qat_checkpoint into a fresh quantize_model-ed model

Or all of it in one call, as a post-calibration recovery step: ``fine_tune(model, loader, epochs=8)``.
"""
from .checkpoint import load_qat_checkpoint, save_qat_checkpoint
from .distill import DistillationLoss, default_blocks, make_teacher
from .fine_tune import FineTuneReport, fine_tune
from .prepare import (QATReport, amax_parameters, freeze_batchnorm, is_batchnorm_frozen, make_amax_fixed,
                      make_amax_learnable, param_groups, prepare_qat, unfreeze_batchnorm)

__all__ = ["prepare_qat", "QATReport", "freeze_batchnorm", "unfreeze_batchnorm", "is_batchnorm_frozen",
           "make_amax_learnable", "make_amax_fixed", "amax_parameters", "param_groups", "make_teacher",
           "DistillationLoss", "default_blocks", "save_qat_checkpoint", "load_qat_checkpoint", "fine_tune",
           "FineTuneReport"]
