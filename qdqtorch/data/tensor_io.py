"""Reading pre-processed input tensors from .npy and raw float32 (.raw/.bin) files, checked against the input shape."""
from __future__ import annotations

import math
from pathlib import Path
from typing import Tuple, Union

import numpy as np
import torch

from ..errors import UsageError

RAW_EXTENSIONS = (".raw", ".bin")


class TensorFileError(UsageError):
    """A tensor file does not hold data of the declared input shape."""


def _npy_array(path: Path, shape: Tuple[int, ...]) -> np.ndarray:
    """Memory-map a .npy and view it as (N, *shape); accepts (C,H,W), (1,C,H,W) and (N,C,H,W) files."""
    try:
        arr = np.load(path, mmap_mode="r", allow_pickle=False)
    except (ValueError, OSError) as err:
        raise TensorFileError(f"{path}: not a readable .npy array ({err})") from None
    if tuple(arr.shape) == tuple(shape):
        return arr.reshape(1, *shape)
    if arr.ndim == len(shape) + 1 and tuple(arr.shape[1:]) == tuple(shape):
        return arr
    raise TensorFileError(f"{path}: array shape {tuple(arr.shape)} does not match the declared input shape "
                          f"{tuple(shape)} (or (N, {', '.join(map(str, shape))}))")


def _raw_array(path: Path, shape: Tuple[int, ...]) -> np.ndarray:
    """Memory-map a raw little-endian float32 file as (N, *shape)."""
    per_sample = math.prod(shape) * 4
    size = path.stat().st_size
    if size == 0 or size % per_sample:
        raise TensorFileError(f"{path}: {size} bytes is not a whole number of float32 samples of shape {tuple(shape)} "
                              f"({per_sample} bytes each); check the declared input shape")
    return np.memmap(path, dtype="<f4", mode="r").reshape(size // per_sample, *shape)


def tensor_file_array(path: Union[str, Path], shape: Tuple[int, ...]) -> np.ndarray:
    """The samples of a .npy/.raw/.bin file as an (N, *shape) array (memory-mapped, not yet read)."""
    path = Path(path)
    if path.suffix.lower() in RAW_EXTENSIONS:
        return _raw_array(path, tuple(shape))
    return _npy_array(path, tuple(shape))


def load_tensor_sample(path: Union[str, Path], index: int, shape: Tuple[int, ...],
                       dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Sample `index` of a tensor file as a torch tensor of `dtype` (no further preprocessing: it is used as is)."""
    arr = tensor_file_array(path, shape)[index]
    if not np.issubdtype(arr.dtype, np.number):
        raise TensorFileError(f"{path}: array dtype {arr.dtype} is not numeric")
    return torch.from_numpy(np.array(arr, dtype=np.float32)).to(dtype)
