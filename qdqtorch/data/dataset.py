"""Torch datasets of model inputs: one per input (images or tensor files) and a zip of them for multi-input models."""
from __future__ import annotations

from pathlib import Path
from typing import List, Optional, Sequence, Tuple, Union

import torch
from torch.utils.data import Dataset

from .hooks import load_hook
from .image_io import BadImageError, read_image
from .preprocess import Preprocess
from .sources import TENSOR_EXTENSIONS, Source, resolve_source
from .tensor_io import load_tensor_sample, tensor_file_array
from .transforms import preprocess_image
from ..errors import UsageError

class HookError(UsageError, RuntimeError):
    """The user's preprocess hook raised; the message names the hook and the files (the cause is chained)."""


# One failed sample: (dataset index, file path, reason).
Failure = Tuple[int, str, str]


class CalibrationDataset(Dataset):
    """Samples of one model input: images preprocessed per `preprocess`, or .npy/.raw tensors used as they are.

    A tensor file holding N samples ((N, C, H, W) .npy or raw float32) contributes N items.
    """

    def __init__(self, source: Source, preprocess: Union[Preprocess, dict, None] = None, split: str = "train"):
        self.preprocess = Preprocess.from_dict(preprocess or {})
        self.files = resolve_source(source, split)
        if self.preprocess.hook:
            load_hook(self.preprocess.hook)     # fail now on a bad hook; workers re-import it by name (picklable)
        self.items: List[Tuple[Path, int]] = []
        for f in self.files:
            if not self.preprocess.hook and f.suffix.lower() in TENSOR_EXTENSIONS:
                n = tensor_file_array(f, self.preprocess.input_shape).shape[0]
                self.items.extend((f, i) for i in range(n))
            else:
                self.items.append((f, 0))

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> torch.Tensor:
        """One (C, H, W) tensor; raises BadImageError for an unreadable image."""
        tensors, failures = self.load_items([index])
        if failures:
            raise BadImageError(failures[0][2])
        return tensors[0]

    def _load_one(self, path: Path, sub: int) -> torch.Tensor:
        pp = self.preprocess
        if path.suffix.lower() in TENSOR_EXTENSIONS:
            return load_tensor_sample(path, sub, pp.input_shape, getattr(torch, pp.dtype))
        return preprocess_image(read_image(path), pp)[0]

    def load_items(self, indices: Sequence[int]) -> Tuple[List[Optional[torch.Tensor]], List[Failure]]:
        """Load several items; unreadable ones come back as None plus a (index, path, reason) failure."""
        if self.preprocess.hook:
            return self._load_with_hook(indices)
        out: List[Optional[torch.Tensor]] = []
        failures: List[Failure] = []
        for i in indices:
            path, sub = self.items[i]
            try:
                out.append(self._load_one(path, sub))
            except BadImageError as err:
                out.append(None)
                failures.append((i, str(path), str(err)))
        return out, failures

    def _load_with_hook(self, indices: Sequence[int]) -> Tuple[List[Optional[torch.Tensor]], List[Failure]]:
        paths = [str(self.items[i][0]) for i in indices]
        try:
            batch = load_hook(self.preprocess.hook)(paths, self.preprocess)
        except Exception as err:  # the user's code: report which hook and which files
            raise HookError(f"preprocess hook {self.preprocess.hook!r} failed on {paths[:3]}"
                               f"{' ...' if len(paths) > 3 else ''}: {type(err).__name__}: {err}") from err
        if not isinstance(batch, torch.Tensor) or batch.ndim < 1 or batch.shape[0] != len(paths):
            shape = tuple(batch.shape) if isinstance(batch, torch.Tensor) else type(batch).__name__
            raise TypeError(f"preprocess hook {self.preprocess.hook!r} must return a tensor with one row per path "
                            f"({len(paths)}), got {shape}")
        return list(batch.unbind(0)), []


class MultiInputDataset(Dataset):
    """Zips one dataset per model input (same count, paired by sorted order); items are tuples of tensors."""

    def __init__(self, datasets: Sequence[CalibrationDataset]):
        self.datasets = list(datasets)
        if not self.datasets:
            raise UsageError("a multi-input dataset needs at least one input")
        counts = [len(d) for d in self.datasets]
        if len(set(counts)) != 1:
            detail = ", ".join(f"input {i} ({d.files[0].parent if d.files else '?'}): {n}"
                               for i, (d, n) in enumerate(zip(self.datasets, counts)))
            raise UsageError(f"multi-input sources must hold the same number of samples, got {detail}")

    def __len__(self) -> int:
        return len(self.datasets[0])

    def __getitem__(self, index: int) -> Tuple[torch.Tensor, ...]:
        return tuple(d[index] for d in self.datasets)

    def load_items(self, indices: Sequence[int]) -> Tuple[List[Optional[Tuple[torch.Tensor, ...]]], List[Failure]]:
        """Load the tuples; a sample unreadable in any input drops the whole tuple."""
        per_input = [d.load_items(indices) for d in self.datasets]
        failures = [f for _, fails in per_input for f in fails]
        bad = {f[0] for f in failures}
        out: List[Optional[Tuple[torch.Tensor, ...]]] = []
        for k, i in enumerate(indices):
            out.append(None if i in bad else tuple(tensors[k] for tensors, _ in per_input))
        return out, failures


__all__ = ["CalibrationDataset", "MultiInputDataset"]
