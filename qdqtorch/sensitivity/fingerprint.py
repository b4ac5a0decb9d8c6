"""Fingerprints that decide whether saved sweep results belong to the current model, data and settings."""
from __future__ import annotations

import hashlib
import json
from typing import Any

import torch
from torch import nn

from ..quantize import named_quantizers


def _update_tensor(digest: "hashlib._Hash", tensor: torch.Tensor) -> None:
    t = tensor.detach().cpu().contiguous().reshape(-1)
    digest.update(f"{t.dtype}{tuple(tensor.shape)}".encode())
    digest.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")


def model_fingerprint(model: nn.Module) -> str:
    """sha256 over every parameter and buffer (amax included) and every quantizer's on/off state."""
    digest = hashlib.sha256()
    for name, tensor in model.state_dict(keep_vars=False).items():
        if name.endswith("._zero_point") and not tensor.any():
            continue  # the symmetric grid: fingerprints stay those of sweeps started before zero points existed
        digest.update(name.encode())
        _update_tensor(digest, tensor)
    for name, q in named_quantizers(model):
        digest.update(f"{name}:{q.is_enabled}:{q.num_bits}:{q.axis}:{q.unsigned}:{q.narrow_range}".encode())
    return digest.hexdigest()


def json_fingerprint(data: Any) -> str:
    """sha256 of a JSON-able value with sorted keys."""
    return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()
