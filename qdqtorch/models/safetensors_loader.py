"""Load a detector saved by qdqtorch as safetensors: the weights plus, in the file's metadata, the Ultralytics model
config that builds the architecture and the class names. No pickle is involved, so such a file is safe to open.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Dict, List, Optional

import torch
import yaml
from torch import nn

from ..atomic import atomic_output
from ..errors import INSTALL_HINT
from .errors import ModelLoadError

ARCHITECTURE_KEY = "qdqtorch.architecture"  # Ultralytics model yaml (text)
NAMES_KEY = "qdqtorch.names"  # JSON list of class names
IMGSZ_KEY = "qdqtorch.imgsz"  # the image size it was trained at (decimal text), when known


def read_metadata(path: Path) -> Optional[Dict[str, str]]:
    """The metadata of a safetensors file, None when the file is not safetensors."""
    from safetensors import safe_open
    try:
        with safe_open(str(path), framework="pt") as f:
            return f.metadata() or {}
    except Exception:  # not a safetensors header
        return None


def save_detector(model: nn.Module, path: str | Path, architecture: str, names: List[str],
                  imgsz: Optional[int] = None) -> Path:
    """Write `model`'s weights (float16) with the model yaml, class names and training image size (the default
    size of evaluations), loadable by `load_model(path)`."""
    from safetensors.torch import save_file
    state = {k: v.detach().to(torch.float16 if v.is_floating_point() else v.dtype).contiguous().cpu()
             for k, v in model.state_dict().items()}
    with atomic_output(path) as tmp:
        metadata = {ARCHITECTURE_KEY: architecture, NAMES_KEY: json.dumps(list(names))}
        if imgsz is not None:
            metadata[IMGSZ_KEY] = str(int(imgsz))
        save_file(state, str(tmp), metadata=metadata)
    return Path(path)


def load_detector(path: Path, metadata: Dict[str, str]) -> nn.Module:
    """Build the architecture from the metadata's model yaml (through ultralytics) and load the weights."""
    from safetensors.torch import load_file
    if ARCHITECTURE_KEY not in metadata:
        raise ModelLoadError(f"{path}: a safetensors file without a '{ARCHITECTURE_KEY}' metadata entry holds only "
                             "tensors, no model to build; pass the training checkpoint (.pt) or a model yaml instead")
    try:
        from ultralytics.nn.tasks import DetectionModel
    except ImportError as exc:
        raise ModelLoadError(f"{path}: its architecture is an Ultralytics model config and needs the `ultralytics` "
                             f"package ({exc}): {INSTALL_HINT.format(extra='yolo')}") from exc
    cfg = yaml.safe_load(metadata[ARCHITECTURE_KEY])
    names = json.loads(metadata.get(NAMES_KEY, "[]"))
    model = DetectionModel(cfg, nc=len(names) or None, verbose=False)
    state = load_file(str(path))
    try:
        model.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in state.items()})
    except RuntimeError as exc:
        raise ModelLoadError(f"{path}: the weights do not fit the architecture in its metadata: "
                             f"{str(exc).splitlines()[0]}") from None
    if names:
        model.names = dict(enumerate(names))
    return model


def recorded_imgsz(metadata: Dict[str, str]) -> Optional[int]:
    """The training image size a qdqtorch safetensors detector records, or None."""
    value = metadata.get(IMGSZ_KEY, "")
    return int(value) if value.isdigit() and int(value) > 0 else None
