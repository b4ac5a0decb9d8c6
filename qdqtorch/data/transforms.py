"""Image geometry (letterbox / plain resize) with the transform info to map boxes back, and pixel normalisation."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence, Tuple, Union

import numpy as np
import torch

from ..optional import require
from .preprocess import Preprocess
from ..errors import UsageError

_CV2_INTERP = {"linear": "INTER_LINEAR", "area": "INTER_AREA", "nearest": "INTER_NEAREST", "cubic": "INTER_CUBIC"}


def _cv2():
    return require("cv2", "opencv-python", "images", "image resizing (qdqtorch.data)")


@dataclass(frozen=True)
class TransformInfo:
    """How an original image maps into the network input: ``new = old * ratio + pad`` per axis (x, y)."""

    orig_hw: Tuple[int, int]            # original (height, width)
    ratio: Tuple[float, float]          # (x scale, y scale) actually applied
    pad: Tuple[float, float]            # (left, top) padding in pixels

    def to_original(self, boxes: torch.Tensor, clip: bool = True) -> torch.Tensor:
        """Map xyxy boxes from network-input pixels back to original-image pixels (new tensor)."""
        out = boxes.clone()
        out[..., [0, 2]] = (out[..., [0, 2]] - self.pad[0]) / self.ratio[0]
        out[..., [1, 3]] = (out[..., [1, 3]] - self.pad[1]) / self.ratio[1]
        if clip:
            h, w = self.orig_hw
            out[..., [0, 2]] = out[..., [0, 2]].clamp(0, w)
            out[..., [1, 3]] = out[..., [1, 3]].clamp(0, h)
        return out

    def to_input(self, boxes: torch.Tensor) -> torch.Tensor:
        """Map xyxy boxes from original-image pixels into network-input pixels (the inverse of `to_original`)."""
        out = boxes.clone()
        out[..., [0, 2]] = out[..., [0, 2]] * self.ratio[0] + self.pad[0]
        out[..., [1, 3]] = out[..., [1, 3]] * self.ratio[1] + self.pad[1]
        return out


def _interp(mode: str, shrinking: bool) -> int:
    cv2 = _cv2()
    if mode == "auto":      # area averaging avoids aliasing when shrinking; linear when enlarging
        return cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR
    return getattr(cv2, _CV2_INTERP[mode])


def letterbox(img: np.ndarray, new_hw: Union[int, Sequence[int]], pad_value: int = 114, scaleup: bool = True,
              center: bool = True, interpolation: str = "auto") -> Tuple[np.ndarray, TransformInfo]:
    """Resize keeping the aspect ratio so the image fits `new_hw`, then pad to exactly `new_hw`.

    The scale is ``min(H/h, W/w)`` (capped at 1 without `scaleup`); the resized size is rounded to whole pixels
    and the recorded ratio is the one actually applied per axis. With `center`, odd padding puts the extra
    pixel on the right/bottom.
    """
    new_h, new_w = (new_hw, new_hw) if isinstance(new_hw, int) else (int(new_hw[0]), int(new_hw[1]))
    h, w = img.shape[:2]
    r = min(new_h / h, new_w / w)
    if not scaleup:
        r = min(r, 1.0)
    rw, rh = max(1, int(round(w * r))), max(1, int(round(h * r)))
    cv2 = _cv2()
    if (rw, rh) != (w, h):
        img = cv2.resize(img, (rw, rh), interpolation=_interp(interpolation, r < 1))
    pad_w, pad_h = new_w - rw, new_h - rh
    left, top = (pad_w // 2, pad_h // 2) if center else (0, 0)
    if pad_w or pad_h:
        img = cv2.copyMakeBorder(img, top, pad_h - top, left, pad_w - left, cv2.BORDER_CONSTANT,
                                 value=(pad_value,) * 3)
    return img, TransformInfo(orig_hw=(h, w), ratio=(rw / w, rh / h), pad=(float(left), float(top)))


def plain_resize(img: np.ndarray, new_hw: Union[int, Sequence[int]],
                 interpolation: str = "auto") -> Tuple[np.ndarray, TransformInfo]:
    """Stretch the image to `new_hw` (no aspect ratio kept, no padding)."""
    new_h, new_w = (new_hw, new_hw) if isinstance(new_hw, int) else (int(new_hw[0]), int(new_hw[1]))
    h, w = img.shape[:2]
    if (new_h, new_w) != (h, w):
        shrinking = new_h * new_w < h * w
        img = _cv2().resize(img, (new_w, new_h), interpolation=_interp(interpolation, shrinking))
    return img, TransformInfo(orig_hw=(h, w), ratio=(new_w / w, new_h / h), pad=(0.0, 0.0))


def apply_geometry(img: np.ndarray, pp: Preprocess) -> Tuple[np.ndarray, TransformInfo]:
    """Letterbox or resize a BGR image as `pp` says."""
    if pp.resize == "letterbox":
        return letterbox(img, pp.hw, pp.pad_value, pp.scaleup, pp.center, pp.interpolation)
    return plain_resize(img, pp.hw, pp.interpolation)


def to_chw_uint8(img: np.ndarray, pp: Preprocess) -> torch.Tensor:
    """(H, W, 3) BGR uint8 → (3, H, W) uint8 tensor in the channel order `pp.color` asks for."""
    if pp.color == "rgb":
        img = img[..., ::-1]
    return torch.from_numpy(np.ascontiguousarray(img.transpose(2, 0, 1)))


def normalize(batch: torch.Tensor, pp: Preprocess) -> torch.Tensor:
    """uint8 (…, C, H, W) → float ``(x - mean) / std`` in `pp.dtype` (done in float32, then cast)."""
    c = batch.shape[-3]
    mean = torch.tensor(pp.mean, dtype=torch.float32, device=batch.device).view(c, 1, 1)
    std = torch.tensor(pp.std, dtype=torch.float32, device=batch.device).view(c, 1, 1)
    out = (batch.to(torch.float32) - mean) / std
    return out.to(getattr(torch, pp.dtype))


def preprocess_image(img: np.ndarray, pp: Preprocess) -> Tuple[torch.Tensor, TransformInfo]:
    """One decoded BGR image → normalised (C, H, W) float tensor plus its transform info."""
    if pp.channels != 3:
        raise UsageError(f"image preprocessing produces 3 channels but the input declares channels={pp.channels}; "
                         f"use .npy/.raw tensors or a custom hook for other channel counts")
    geo, info = apply_geometry(img, pp)
    return normalize(to_chw_uint8(geo, pp), pp), info
