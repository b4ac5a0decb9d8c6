"""Fold BatchNorm into the preceding convolution, to study whether folding before quantization helps."""
from __future__ import annotations

import torch
from torch import nn


def _fold_into(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> None:
    """Rewrite conv so conv'(x) == bn(conv(x)) with bn's running statistics (computed in float64)."""
    dtype = conv.weight.dtype
    scale = bn.weight.double() if bn.weight is not None else torch.ones_like(bn.running_var, dtype=torch.float64)
    shift = bn.bias.double() if bn.bias is not None else torch.zeros_like(bn.running_mean, dtype=torch.float64)
    scale = scale / torch.sqrt(bn.running_var.double() + bn.eps)
    bias = conv.bias.double() if conv.bias is not None else torch.zeros_like(scale)
    grad = conv.weight.requires_grad
    with torch.no_grad():
        weight = conv.weight.double() * scale.view(-1, *([1] * (conv.weight.dim() - 1)))
        conv.weight = nn.Parameter(weight.to(dtype), requires_grad=grad)
        conv.bias = nn.Parameter(((bias - bn.running_mean.double()) * scale + shift).to(dtype), requires_grad=grad)


def _foldable(conv: object, bn: object) -> bool:
    return (isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d) and bn.running_mean is not None
            and bn.running_var is not None and bn.num_features == conv.out_channels)


def fold_batchnorm(model: nn.Module) -> int:
    """Fold every `bn` child into its sibling `conv` (the act(bn(conv(x))) Conv-module pattern); return the count.

    Each folded BatchNorm2d is replaced by nn.Identity, so the module's forward is unchanged. Only valid for
    inference (uses the running statistics): call it on an eval-mode model.
    """
    count = 0
    for module in list(model.modules()):
        conv, bn = getattr(module, "conv", None), getattr(module, "bn", None)
        if _foldable(conv, bn):
            _fold_into(conv, bn)
            module.bn = nn.Identity()
            count += 1
    return count
