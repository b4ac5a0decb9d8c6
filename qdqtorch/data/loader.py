"""`calibration_loader`: batches of preprocessed inputs for calibration, skipping unreadable images with one report."""
from __future__ import annotations

import math
from typing import Iterator, List, Optional, Sequence, Tuple, Union

import torch
from torch.utils.data import BatchSampler, DataLoader, Dataset, RandomSampler, SequentialSampler

from .dataset import CalibrationDataset, Failure, MultiInputDataset
from .image_io import BadImageError, report_bad_images
from .preprocess import Preprocess
from .sources import Source
from ..errors import UsageError

Batch = Union[torch.Tensor, Tuple[torch.Tensor, ...]]


class _BatchFetch(Dataset):
    """Adapter: fetch a whole list of indices at once (so hooks see batches), stacking the readable samples."""

    def __init__(self, dataset: Union[CalibrationDataset, MultiInputDataset]):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, indices: List[int]) -> Tuple[Optional[Batch], List[Failure]]:
        items, failures = self.dataset.load_items(indices)
        good = [x for x in items if x is not None]
        if not good:
            return None, failures
        if isinstance(good[0], tuple):
            return tuple(torch.stack(parts) for parts in zip(*good)), failures
        return torch.stack(good), failures


def _identity(x):
    return x


class CalibrationLoader:
    """Iterable of batches: (B, C, H, W) tensors, or a tuple of them for multi-input models.

    Unreadable images are skipped (the batch gets smaller) and reported in one warning when the pass ends;
    if none can be read it is an error. `num_images` caps the number of samples actually yielded; `images_used`
    is how many the last pass yielded.
    """

    def __init__(self, dataset: Union[CalibrationDataset, MultiInputDataset], batch_size: int = 8,
                 num_images: Optional[int] = None, workers: int = 0, shuffle: bool = False, seed: int = 0):
        if batch_size <= 0:
            raise UsageError(f"batch_size must be positive, got {batch_size}")
        if num_images is not None and num_images <= 0:
            raise UsageError(f"num_images must be positive, got {num_images}")
        self.dataset = dataset
        self.batch_size = batch_size
        self.num_images = min(num_images, len(dataset)) if num_images else len(dataset)
        self.workers = workers
        self.shuffle = shuffle
        self.seed = seed
        self.failures: List[Failure] = []
        self.images_used = 0                    # samples actually yielded by the last pass (unreadable ones skipped)

    def __len__(self) -> int:
        """Number of batches when every image is readable."""
        return math.ceil(self.num_images / self.batch_size)

    def _sources(self) -> str:
        ds = self.dataset
        parts = ds.datasets if isinstance(ds, MultiInputDataset) else [ds]
        return ", ".join(str(d.files[0].parent) for d in parts if d.files)

    def __iter__(self) -> Iterator[Batch]:
        gen = torch.Generator().manual_seed(self.seed)
        order = RandomSampler(self.dataset, generator=gen) if self.shuffle else SequentialSampler(self.dataset)
        loader = DataLoader(_BatchFetch(self.dataset), batch_size=None, collate_fn=_identity,
                            sampler=BatchSampler(order, self.batch_size, drop_last=False),
                            num_workers=self.workers, persistent_workers=False)
        self.failures = []
        self.images_used = 0
        remaining, seen = self.num_images, 0
        for batch, failures in loader:
            self.failures.extend(failures)
            if batch is None:
                seen += len({f[0] for f in failures})
                continue
            n = len(batch[0]) if isinstance(batch, tuple) else len(batch)
            seen += n + len({f[0] for f in failures})
            if n > remaining:
                batch = tuple(b[:remaining] for b in batch) if isinstance(batch, tuple) else batch[:remaining]
                n = remaining
            remaining -= n
            self.images_used += n
            yield batch
            if remaining == 0:
                break
        if remaining == self.num_images:        # nothing readable at all
            shown = "\n  ".join(reason for _, _, reason in self.failures[:5])
            raise BadImageError(f"none of the {seen} samples from {self._sources()} could be read:\n  {shown}")
        report_bad_images([(p, r) for _, p, r in self.failures], seen)


def _as_list(preprocess) -> Optional[list]:
    return list(preprocess) if isinstance(preprocess, (list, tuple)) else None


def calibration_loader(source: Union[Source, Sequence[Source]],
                       preprocess: Union[Preprocess, dict, Sequence[Union[Preprocess, dict]], None] = None, *,
                       batch_size: int = 8, num_images: Optional[int] = None, workers: int = 0,
                       shuffle: bool = False, seed: int = 0, split: str = "train") -> CalibrationLoader:
    """Batches of calibration inputs from `source` preprocessed with `preprocess`.

    Single input: `source` is a folder, .txt list, dataset yaml (`split`), tensor file or a list of those and
    `preprocess` one Preprocess/dict (default: YOLO 640 letterbox). Multi-input: `preprocess` is a list (one per
    input, in the model's input order) and `source` a list of the same length; batches are tuples.
    """
    pps = _as_list(preprocess)
    if pps is None:
        return CalibrationLoader(CalibrationDataset(source, preprocess, split), batch_size, num_images, workers,
                                 shuffle, seed)
    if not isinstance(source, (list, tuple)) or len(source) != len(pps):
        n_src = len(source) if isinstance(source, (list, tuple)) else 1
        raise UsageError(f"multi-input calibration needs one source per input: got {len(pps)} preprocess settings "
                         f"but {n_src} source(s)")
    datasets = [CalibrationDataset(s, p, split) for s, p in zip(source, pps)]
    return CalibrationLoader(MultiInputDataset(datasets), batch_size, num_images, workers, shuffle, seed)
