"""QAT checkpoints: the whole state_dict (weights, BatchNorm statistics, every quantizer's `_amax`) plus quantizer
settings, as safetensors or a weights-only torch file, reloadable into a freshly quantized model. Never a pickle."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict, Optional, Union

import torch
from torch import nn

from ..atomic import atomic_output
from ..nn import CalibrationError
from ..quantize import named_quantizers
from ..quantize.state import check_saved_format
from ._util import unwrap
from ..errors import UsageError

FORMAT = "qdqtorch.qat_checkpoint"
VERSION = 1
_TORCH_SUFFIXES = (".pt", ".pth")


def _quantizer_settings(model: nn.Module) -> Dict[str, dict]:
    return {name: {"num_bits": q.num_bits, "axis": q.axis, "enabled": q.is_enabled,
                   "learn_amax": q.is_learnable} for name, q in named_quantizers(model)}


def save_qat_checkpoint(model: nn.Module, path: Union[str, Path], *, metadata: Optional[dict] = None) -> Path:
    """Save a (QAT) quantized model's state_dict and quantizer settings to `.safetensors` (or `.pt`/`.pth`, a
    plain dict of tensors that loads with weights_only=True). DDP/compile wrappers are unwrapped, so keys carry no
    `module.` prefix. `metadata`: JSON-able notes (epoch, mAP...) returned by `load_qat_checkpoint`."""
    path = Path(path)
    if path.suffix not in (".safetensors", *_TORCH_SUFFIXES):
        raise UsageError(f"save_qat_checkpoint: {path}: use a .safetensors (or .pt/.pth) file name")
    if not path.parent.is_dir():
        raise FileNotFoundError(f"save_qat_checkpoint: folder {path.parent} does not exist")
    model = unwrap(model)
    state = {}
    for key, value in model.state_dict().items():
        if not isinstance(value, torch.Tensor):
            raise TypeError(f"save_qat_checkpoint: state_dict entry {key!r} is a {type(value).__name__}, not a "
                            "tensor; this format stores tensors only")
        state[key] = value.detach().cpu().contiguous().clone()  # clone: safetensors refuses shared storage
    settings = _quantizer_settings(model)
    try:
        user = json.dumps(metadata or {})
    except TypeError as exc:
        raise TypeError(f"save_qat_checkpoint: metadata must be JSON-serialisable ({exc})") from None
    if path.suffix == ".safetensors":
        from safetensors.torch import save_file
        meta = {"format": FORMAT, "version": str(VERSION), "quantizers": json.dumps(settings), "metadata": user}
        with atomic_output(path) as tmp:
            save_file(state, str(tmp), metadata=meta)
    else:
        blob = {"format": FORMAT, "version": VERSION, "quantizers": json.dumps(settings), "metadata": user,
                "state_dict": state}
        with atomic_output(path) as tmp:
            torch.save(blob, tmp)
    return path


def _read(path: Path) -> tuple:
    """(state_dict, quantizer settings, user metadata) from a checkpoint file, without running any pickle."""
    if not path.is_file():
        raise FileNotFoundError(f"load_qat_checkpoint: no such file: {path}")
    if path.suffix == ".safetensors":
        from safetensors import safe_open
        try:
            with safe_open(str(path), framework="pt") as fh:
                meta = fh.metadata() or {}
                state = {k: fh.get_tensor(k) for k in fh.keys()} if meta.get("format") == FORMAT else None
        except Exception as exc:  # safetensors raises its own error types for damaged files
            raise UsageError(f"load_qat_checkpoint: {path} is not a readable safetensors file ({exc})") from None
    elif path.suffix in _TORCH_SUFFIXES:
        try:
            meta = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:
            raise UsageError(f"load_qat_checkpoint: {path} is not a weights-only torch file written by "
                             f"save_qat_checkpoint ({type(exc).__name__}: {str(exc)[:200]})") from None
        meta = meta if isinstance(meta, dict) else {}
        state = meta.get("state_dict")
    else:
        raise UsageError(f"load_qat_checkpoint: {path}: expected a .safetensors, .pt or .pth file")
    if meta.get("format") != FORMAT or state is None:
        raise UsageError(f"load_qat_checkpoint: {path} is not a qdqtorch QAT checkpoint (format {FORMAT}); a "
                         "calibration file goes to qdqtorch.load_calibration, a training checkpoint to load_model")
    return state, json.loads(meta["quantizers"]), json.loads(meta.get("metadata") or "{}")


def _listing(names: list) -> str:
    return f"{names[:8]}{'...' if len(names) > 8 else ''} ({len(names)})"


def load_qat_checkpoint(model: nn.Module, path: Union[str, Path], *, strict: bool = True,
                        restore_flags: bool = True) -> Dict[str, Any]:
    """Load a checkpoint from `save_qat_checkpoint` into `model`, quantized the same way (quantize_model with the
    same config) but not necessarily calibrated, on any device. Returns the saved `metadata`.

    `restore_flags`: also restore each quantizer's enabled flag and learned-amax setting (learned amax comes back
    as a Parameter, so QAT can resume: load before building the optimizer, and call prepare_qat again).
    `strict`: the model's state_dict keys and quantizers must match the file's exactly.
    """
    path = Path(path)
    state, settings, user = _read(path)
    model = unwrap(model)
    quantizers = dict(named_quantizers(model))
    if strict:
        model_keys, file_keys = set(model.state_dict()), set(state)
        missing, extra = sorted(model_keys - file_keys), sorted(file_keys - model_keys)
        missing = [k for k in missing if not k.endswith("._zero_point")]  # saved before shifted grids: zero point 0
        missing_q, extra_q = sorted(set(quantizers) - set(settings)), sorted(set(settings) - set(quantizers))
        if missing or extra or missing_q or extra_q:
            raise CalibrationError(
                f"load_qat_checkpoint: {path} does not match the model: missing in file "
                f"{_listing(missing + missing_q)}, not in model {_listing(extra + extra_q)}. Load the same model and "
                "quantize it with the same config (ignore list, module types) as when it was saved, or pass "
                "strict=False")
    for name, entry in settings.items():
        q = quantizers.get(name)
        if q is None:
            continue
        check_saved_format(q, name, entry, f"load_qat_checkpoint: {path}")
        if restore_flags:
            if entry.get("learn_amax") and not q.learn_amax:
                q.desc = q.desc.replace(learn_amax=True)
            (q.enable if entry.get("enabled", True) else q.disable)()
    try:
        model.load_state_dict(state, strict=strict)
    except RuntimeError as exc:
        raise CalibrationError(f"load_qat_checkpoint: {path} does not fit the model: {exc}") from None
    return user
