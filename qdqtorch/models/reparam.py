"""Fuse re-parameterisable blocks (RepConv: k x k conv + 1 x 1 conv + identity, each with BatchNorm) into one conv.

Why: TensorRT runs the deployed form, a single convolution, so its Q/DQ (one weight and one input quantizer) and its
scales must be the fused conv's, not those of the training form's two convs and Add. The blocks are recognised by
structure, whatever the repository: Ultralytics/YOLOv6 style (`conv1`, `conv2` Conv+BN modules, `bn` identity
branch, `act`) and YOLOv7/RepVGG style (`rbr_dense`, `rbr_1x1` conv+BN pairs, `rbr_identity`, `act` or
`nonlinearity`). The arithmetic is done in float64.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import nn


class FusedRepConv(nn.Module):
    """The deployed form of a RepConv block: act(conv(x)), with the block's layer-graph attributes (f, i, ...)."""

    def __init__(self, conv: nn.Conv2d, act: nn.Module) -> None:
        super().__init__()
        self.conv = conv
        self.act = act

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.conv(x))


def _conv_bn(branch: Optional[nn.Module]) -> Optional[tuple[nn.Conv2d, nn.BatchNorm2d]]:
    """(conv, bn) of a conv+BN branch: a module with `.conv`/`.bn` (and no activation) or a Sequential of the two."""
    if branch is None:
        return None
    if isinstance(branch, nn.Sequential) and len(branch) == 2:
        conv, bn = branch[0], branch[1]
    else:
        conv, bn = getattr(branch, "conv", None), getattr(branch, "bn", None)
        if not isinstance(getattr(branch, "act", nn.Identity()), nn.Identity):
            return None
    if isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d):
        return conv, bn
    return None


def _scaled(weight: torch.Tensor, bias: torch.Tensor, bn: nn.BatchNorm2d) -> tuple[torch.Tensor, torch.Tensor]:
    """Kernel and bias of bn(conv(x)) from conv's (weight, bias), float64."""
    std = torch.sqrt(bn.running_var.double() + bn.eps)
    gamma = bn.weight.double() if bn.weight is not None else torch.ones_like(std)
    beta = bn.bias.double() if bn.bias is not None else torch.zeros_like(std)
    scale = gamma / std
    return weight * scale.view(-1, 1, 1, 1), beta + (bias - bn.running_mean.double()) * scale


def _parts(block: nn.Module) -> Optional[tuple[list, Optional[nn.BatchNorm2d], nn.Module]]:
    """([(conv, bn), ...], identity BN or None, activation) of a RepConv-like block, None when it is not one."""
    for dense, one, ident, acts in (("conv1", "conv2", "bn", ("act",)),
                                    ("rbr_dense", "rbr_1x1", "rbr_identity", ("act", "nonlinearity"))):
        if not (hasattr(block, dense) and hasattr(block, one)):
            continue
        branches = [_conv_bn(getattr(block, dense)), _conv_bn(getattr(block, one))]
        identity = getattr(block, ident, None)
        act = next((getattr(block, a) for a in acts if isinstance(getattr(block, a, None), nn.Module)), None)
        if None in branches or act is None or not (identity is None or isinstance(identity, nn.BatchNorm2d)):
            return None
        if any(isinstance(getattr(block, name, None), nn.Module) and not isinstance(getattr(block, name), nn.Identity)
               for name in ("se", "attention")):  # squeeze-excitation after the sum: not a plain conv
            return None
        return branches, identity, act
    return None


def _fused_conv(branches: list, identity: Optional[nn.BatchNorm2d]) -> Optional[nn.Conv2d]:
    """One conv equal to the sum of the branches (1 x 1 kernels centred in the k x k one) and the identity BN."""
    (dense, _), (one, _) = branches
    k = dense.kernel_size
    if (dense.stride != one.stride or dense.groups != one.groups or dense.dilation != (1, 1)
            or one.kernel_size != (1, 1) or k[0] != k[1] or k[0] % 2 == 0
            or dense.padding != (k[0] // 2,) * 2 or one.padding != (0, 0)):
        return None
    weight = torch.zeros(dense.weight.shape, dtype=torch.float64)
    bias = torch.zeros(dense.out_channels, dtype=torch.float64)
    c = k[0] // 2
    for conv, bn in branches:
        w = conv.weight.double()
        b = conv.bias.double() if conv.bias is not None else torch.zeros(conv.out_channels, dtype=torch.float64)
        w, b = _scaled(w, b, bn)
        weight[:, :, c - w.shape[2] // 2:c + w.shape[2] // 2 + 1, c - w.shape[3] // 2:c + w.shape[3] // 2 + 1] += w
        bias += b
    if identity is not None:
        if dense.in_channels != dense.out_channels or dense.stride != (1, 1):
            return None
        per_group = dense.in_channels // dense.groups
        eye = torch.zeros_like(weight)
        for i in range(dense.out_channels):
            eye[i, i % per_group, c, c] = 1.0
        w, b = _scaled(eye, torch.zeros_like(bias), identity)
        weight += w
        bias += b
    fused = nn.Conv2d(dense.in_channels, dense.out_channels, k, dense.stride, dense.padding, groups=dense.groups,
                      bias=True, padding_mode=dense.padding_mode).to(dense.weight.device)
    with torch.no_grad():
        fused.weight.copy_(weight.to(dense.weight.dtype))
        fused.bias.copy_(bias.to(dense.weight.dtype))
    fused.weight.requires_grad_(dense.weight.requires_grad)
    fused.bias.requires_grad_(dense.weight.requires_grad)
    return fused


def fuse_reparameterizable(model: nn.Module) -> list[str]:
    """Replace every RepConv-like block by its deployed single conv (in place, eval statistics); return their names.

    Only valid for inference (uses BatchNorm running statistics): the training form is what QAT fine-tunes, so
    skip this for QAT. Blocks whose branches do not line up (strides, paddings, a squeeze-excitation) stay as they are.
    """
    fused_names = []
    for name, block in list(model.named_modules()):
        if not name or isinstance(block, FusedRepConv):
            continue
        parts = _parts(block)
        conv = _fused_conv(parts[0], parts[1]) if parts else None
        if conv is None:
            continue
        replacement = FusedRepConv(conv, parts[2])
        replacement.training = block.training
        for key, value in vars(block).items():  # layer-graph bookkeeping of YOLO repositories (f, i, type, np)
            if not key.startswith("_") and key != "training" and not hasattr(replacement, key):
                setattr(replacement, key, value)
        parent_name, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent_name) if parent_name else model, child, replacement)
        fused_names.append(name)
    return fused_names
