"""Reading images with OpenCV into 8-bit 3-channel BGR arrays, whatever their depth or channel count."""
from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import List, Optional, Sequence, Tuple, Union

import numpy as np

from ..errors import UsageError
from ..optional import require

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".dng", ".mpo", ".pfm", ".jp2")


class BadImageError(UsageError):
    """An image file could not be decoded (missing, corrupt or an unsupported format)."""


def _jpeg_truncation(path: str) -> Optional[str]:
    """Why a JPEG file is truncated, or None: libjpeg decodes a cut-off file to a half-grey image with only a
    "Premature end of JPEG file" on stderr, so it is checked here.

    Cheap first: a complete JPEG ends with the EOI marker FF D9 (a 2-byte read). Only files that do not (truncated,
    or with data appended after EOI, which is legal) are decoded by Pillow with truncated images refused.
    """
    try:
        with open(path, "rb") as fh:
            if fh.read(3) != b"\xff\xd8\xff":
                return None                      # not a JPEG
            fh.seek(-2, os.SEEK_END)
            if fh.read(2) == b"\xff\xd9":
                return None
    except OSError:
        return None                              # unreadable: the decoder below reports it
    from PIL import Image, ImageFile
    allow = ImageFile.LOAD_TRUNCATED_IMAGES      # Ultralytics/YOLOv5 set it to True globally
    ImageFile.LOAD_TRUNCATED_IMAGES = False
    try:
        with Image.open(path) as im:
            im.load()
    except (OSError, SyntaxError) as err:
        return f"{path}: truncated or corrupt JPEG ({err})"
    finally:
        ImageFile.LOAD_TRUNCATED_IMAGES = allow
    return None


def read_image(path: Union[str, Path]) -> np.ndarray:
    """Decode `path` to an (H, W, 3) uint8 BGR array; gray→3 channels, 16-bit→8-bit, alpha dropped.

    Uses cv2.IMREAD_COLOR (as YOLO's own loaders do), which also applies the EXIF orientation and performs the
    depth/channel conversions; the bytes fallback handles paths cv2.imread cannot open (non-ASCII on Windows).
    A truncated JPEG is an error (BadImageError), not a half-grey image.
    """
    cv2 = require("cv2", "opencv-python", "images", "reading images (qdqtorch.data)")
    path = str(path)
    truncated = _jpeg_truncation(path)
    if truncated:
        raise BadImageError(truncated)
    img = cv2.imread(path, cv2.IMREAD_COLOR)
    if img is None:
        try:
            buf = np.fromfile(path, dtype=np.uint8)
        except OSError as err:
            raise BadImageError(f"{path}: cannot read file ({err.strerror or err})") from None
        img = cv2.imdecode(buf, cv2.IMREAD_COLOR) if buf.size else None
        if img is None:
            raise BadImageError(f"{path}: not a decodable image (corrupt or unsupported format)")
    if img.ndim != 3 or img.shape[2] != 3 or img.dtype != np.uint8 or min(img.shape[:2]) == 0:
        raise BadImageError(f"{path}: decoded to an unexpected array {img.dtype}{tuple(img.shape)}")
    return img


def report_bad_images(bad: Sequence[Tuple[str, str]], total: int, what: str = "images", show: int = 5) -> None:
    """Emit ONE warning listing how many files were skipped and the first few with their reason."""
    if not bad:
        return
    lines: List[str] = [f"  {reason}" for _, reason in bad[:show]]
    more = f"\n  ... and {len(bad) - show} more" if len(bad) > show else ""
    warnings.warn(f"skipped {len(bad)} of {total} {what} that could not be read (fix or remove these files):\n"
                  + "\n".join(lines) + more,
                  stacklevel=3)
