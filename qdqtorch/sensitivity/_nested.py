"""Deep copies of the nested tensors that hooks capture (tensors, lists/tuples and dicts of them)."""
from __future__ import annotations

from typing import Any

import torch


def clone_nested(value: Any) -> Any:
    """Detached copy of every tensor in `value`, so later in-place ops cannot change what was captured."""
    if isinstance(value, torch.Tensor):
        return value.detach().clone()
    if isinstance(value, (list, tuple)):
        return type(value)(clone_nested(v) for v in value)
    if isinstance(value, dict):
        return {k: clone_nested(v) for k, v in value.items()}
    return value
