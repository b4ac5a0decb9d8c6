"""Small helpers shared by the QAT modules: unwrapping DDP/compiled models, flattening nested outputs."""
from __future__ import annotations

from typing import Any, List

import torch
from torch import nn


def unwrap(model: nn.Module) -> nn.Module:
    """The user's module inside DistributedDataParallel / DataParallel / torch.compile wrappers."""
    while True:
        if isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
            model = model.module
        elif hasattr(model, "_orig_mod") and isinstance(model._orig_mod, nn.Module):
            model = model._orig_mod
        else:
            return model


def flatten_tensors(output: Any) -> List[torch.Tensor]:
    """Floating-point tensors of a (nested) module output in depth-first order; other leaves are skipped."""
    if isinstance(output, torch.Tensor):
        return [output] if output.is_floating_point() else []
    if isinstance(output, dict):
        output = list(output.values())
    if isinstance(output, (list, tuple)):
        return [t for item in output for t in flatten_tensors(item)]
    return []

