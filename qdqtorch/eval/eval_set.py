"""EvalSet: evaluation images loaded and letterboxed once, with their ground truth, for repeated fast evaluation."""
from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Sequence, Tuple, Union

import torch
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from ..data.image_io import BadImageError, read_image, report_bad_images
from ..data.preprocess import Preprocess
from ..data.sources import Source, dataset_names, resolve_source
from ..data.transforms import TransformInfo, apply_geometry, normalize, to_chw_uint8
from .coco_ids import COCO80_NAMES, COCO80_TO_91, is_coco80
from .ground_truth import (image_ids_for, label_path_for, load_coco_json, match_coco_images, read_yolo_labels,
                           subset_coco, yolo_to_coco)

from ..errors import UsageError

PreprocessLike = Union[Preprocess, dict, None]


class _LetterboxFetch(Dataset):
    """Decode + geometry for one image; failures are returned, not raised, so one bad file never stops the run."""

    def __init__(self, paths: Sequence[Path], pp: Preprocess):
        self.paths, self.pp = list(paths), pp

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int):
        try:
            img, info = apply_geometry(read_image(self.paths[i]), self.pp)
        except BadImageError as err:
            return i, None, None, str(err)
        return i, to_chw_uint8(img, self.pp), info, None


def _first(batch):
    return batch[0]


def _load_images(paths: Sequence[Path], pp: Preprocess, workers: int, progress: bool):
    """Letterbox every image once: (uint8 (N, C, H, W) tensor, infos, indices kept, failures)."""
    if pp.hook is not None:
        raise UsageError("EvalSet needs geometric preprocessing (letterbox or resize) to map boxes back; a custom "
                         "preprocess hook cannot be used for evaluation")
    if pp.channels != 3:
        raise UsageError(f"EvalSet evaluates 3-channel images; preprocess declares channels={pp.channels}")
    loader = DataLoader(_LetterboxFetch(paths, pp), batch_size=1, collate_fn=_first, num_workers=workers)
    images = torch.empty((len(paths), 3, *pp.hw), dtype=torch.uint8)
    infos: List[Optional[TransformInfo]] = [None] * len(paths)
    failures: List[Tuple[str, str]] = []
    for i, img, info, err in tqdm(loader, total=len(paths), desc="loading eval images", disable=not progress,
                                  leave=False):
        if err is not None:
            failures.append((str(paths[i]), err))
            continue
        images[i], infos[i] = img, info
    kept = [i for i, info in enumerate(infos) if info is not None]
    if not kept:
        shown = "\n  ".join(r for _, r in failures[:5])
        raise BadImageError(f"none of the {len(paths)} evaluation images could be read:\n  {shown}")
    report_bad_images(failures, len(paths), "evaluation images")
    if len(kept) < len(paths):
        images = images[kept]
    return images, [infos[i] for i in kept], kept


@dataclass
class EvalSet:
    """Letterboxed uint8 images (colour order per `preprocess`), their transform infos and COCO ground truth.

    Built once (decoding and resizing happen here), then `evaluate` can run hundreds of times on it. Memory:
    3*H*W bytes per image (1.2 MB at 640; about 6 GB for the 5000 COCO val images).
    `category_ids[c]` is the ground-truth category id of the model's class index `c`.
    """

    images: torch.Tensor                   # (N, 3, H, W) uint8
    infos: List[TransformInfo]
    image_ids: List[int]
    paths: List[Path]
    gt: dict
    names: List[str]
    category_ids: List[int]
    preprocess: Preprocess
    _scorers: Dict[str, object] = field(default_factory=dict, repr=False)
    labelled: bool = True                  # False: images only (from_images); score with fidelity, not labels

    def __len__(self) -> int:
        return len(self.image_ids)

    def __repr__(self) -> str:
        h, w = self.preprocess.hw
        if not self.labelled:
            return f"EvalSet({len(self)} unlabelled images at {h}x{w})"
        return (f"EvalSet({len(self)} images at {h}x{w}, {self.num_annotations} boxes, "
                f"{len(self.category_ids)} classes)")

    @property
    def num_annotations(self) -> int:
        """Ground-truth boxes over the evaluated images."""
        return len(self.gt["annotations"])

    def scorer(self, name: str):
        """The scorer `name` prepared for this ground truth (built once, then reused)."""
        if not self.labelled:
            raise UsageError(f"the {len(self)} evaluation images (e.g. {self.paths[0]}) have no labels: mAP against "
                             f"labels cannot be computed; use fidelity (qdqtorch.eval.fidelity) instead")
        if name not in self._scorers:
            from .scorers import make_scorer
            self._scorers[name] = make_scorer(name, self.gt, self.image_ids)
        return self._scorers[name]

    def batches(self, batch_size: int, device: Union[str, torch.device] = "cpu",
                dtype: Optional[torch.dtype] = None) -> Iterator[Tuple[int, torch.Tensor]]:
        """(start index, normalised float batch on `device`) over the whole set."""
        for start in range(0, len(self), batch_size):
            x = self.images[start:start + batch_size].to(device, non_blocking=True)
            x = normalize(x, self.preprocess)
            yield start, x if dtype is None else x.to(dtype)

    # ----------------------------------------------------------------------------------------------- builders
    @classmethod
    def from_yolo(cls, images: Source, preprocess: PreprocessLike = None, *, labels: Union[str, Path, None] = None,
                  names: Optional[Sequence[str]] = None, coco_ids: Optional[bool] = None,
                  num_images: Optional[int] = None, workers: int = 0, progress: bool = True,
                  split: str = "val") -> "EvalSet":
        """Images (folder / list / dataset yaml split / files) with YOLO label files (next to them by the
        images→labels convention, or in `labels`). Classes map to COCO's 91-id scheme when `coco_ids` (default:
        when `names` are the 80 COCO classes), else class i has category id i."""
        pp = Preprocess.from_dict(preprocess or {})
        paths = resolve_source(images, split)[:num_images]
        if coco_ids is None:
            coco_ids = is_coco80(names)
        if names is None:
            if coco_ids:
                names = COCO80_NAMES
            else:
                top = max((int(read_yolo_labels(label_path_for(p, labels))[:, 0].max(initial=-1)) for p in paths),
                          default=-1)
                names = [str(i) for i in range(top + 1)]
        names = [str(n) for n in names]
        if coco_ids and len(names) != 80:
            raise UsageError(f"coco_ids=True maps 80 COCO classes to category ids, but {len(names)} names were given")
        category_ids = list(COCO80_TO_91) if coco_ids else list(range(len(names)))
        label_files = [label_path_for(p, labels) for p in paths]
        if not any(f.is_file() for f in label_files):
            raise FileNotFoundError(f"no YOLO label files found for the {len(paths)} images (looked for e.g. "
                                    f"{label_files[0]}); pass labels=<folder of .txt files>, or use "
                                    f"EvalSet.from_coco_json for COCO annotations")
        tensors, infos, kept = _load_images(paths, pp, workers, progress)
        paths = [paths[i] for i in kept]
        gt = yolo_to_coco(paths, [info.orig_hw for info in infos], names, category_ids, labels)
        return cls(tensors, infos, image_ids_for(paths), paths, gt, names, category_ids, pp)

    @classmethod
    def from_images(cls, images: Source, preprocess: PreprocessLike = None, *, num_images: Optional[int] = None,
                    workers: int = 0, progress: bool = True, split: str = "val") -> "EvalSet":
        """Images only (folder / list file / dataset yaml split / files), no labels: `labelled` is False, so the
        set is for fidelity (the float model's detections as ground truth), not for mAP against labels."""
        pp = Preprocess.from_dict(preprocess or {})
        paths = resolve_source(images, split)[:num_images]
        tensors, infos, kept = _load_images(paths, pp, workers, progress)
        paths = [paths[i] for i in kept]
        ids = image_ids_for(paths)
        gt = {"images": [{"id": i, "file_name": p.name, "height": int(info.orig_hw[0]), "width": int(info.orig_hw[1])}
                         for i, p, info in zip(ids, paths, infos)], "annotations": [], "categories": []}
        return cls(tensors, infos, ids, paths, gt, [], [], pp, labelled=False)

    @classmethod
    def from_source(cls, source: Source, preprocess: PreprocessLike = None, *, names: Optional[Sequence[str]] = None,
                    split: str = "val", **kwargs) -> "EvalSet":
        """A dataset yaml (its split, labels and names), or images with YOLO labels when any exist, else the
        images alone (unlabelled, for fidelity)."""
        if isinstance(source, (str, Path)) and Path(source).suffix.lower() in (".yaml", ".yml"):
            paths = resolve_source(source, split)
            if has_labels(paths):
                return cls.from_yaml(source, split, preprocess, **kwargs)
            return cls.from_images(source, preprocess, split=split, **kwargs)
        if has_labels(resolve_source(source, split)):
            return cls.from_yolo(source, preprocess, names=names, split=split, **kwargs)
        return cls.from_images(source, preprocess, split=split, **kwargs)

    @classmethod
    def from_yaml(cls, data_yaml: Union[str, Path], split: str = "val", preprocess: PreprocessLike = None,
                  **kwargs) -> "EvalSet":
        """A split of an Ultralytics dataset yaml with its YOLO labels and `names:`."""
        kwargs.setdefault("names", dataset_names(data_yaml))
        return cls.from_yolo(data_yaml, preprocess, split=split, **kwargs)

    @classmethod
    def from_coco_json(cls, images: Source, annotations: Union[str, Path, dict], preprocess: PreprocessLike = None,
                       *, category_ids: Optional[Sequence[int]] = None, num_images: Optional[int] = None,
                       workers: int = 0, progress: bool = True, split: str = "val") -> "EvalSet":
        """Images matched by file name to a COCO instances json. Model class i maps to the i-th category id in
        ascending order (the standard 80→91 mapping for COCO) unless `category_ids` says otherwise."""
        pp = Preprocess.from_dict(preprocess or {})
        source = str(annotations) if not isinstance(annotations, dict) else "the annotations dict"
        gt = annotations if isinstance(annotations, dict) else load_coco_json(annotations)
        paths = resolve_source(images, split)
        found, ids = match_coco_images(paths, gt, source)
        if len(found) < len(paths):
            missing = [paths[i].name for i in sorted(set(range(len(paths))) - set(found))]
            warnings.warn(f"{len(missing)} of {len(paths)} images are not in {source} and are not evaluated "
                          f"(e.g. {', '.join(missing[:3])})", stacklevel=2)
        paths, ids = [paths[i] for i in found][:num_images], ids[:num_images]
        tensors, infos, kept = _load_images(paths, pp, workers, progress)
        paths, ids = [paths[i] for i in kept], [ids[i] for i in kept]
        cats = sorted(gt["categories"], key=lambda c: c["id"])
        by_id = {c["id"]: c["name"] for c in cats}
        category_ids = list(category_ids) if category_ids is not None else [c["id"] for c in cats]
        unknown = [c for c in category_ids if c not in by_id]
        if unknown:
            raise UsageError(f"category ids {unknown[:5]} are not in {source}")
        _check_sizes(gt, ids, infos, source)
        return cls(tensors, infos, ids, paths, subset_coco(gt, ids), [by_id[c] for c in category_ids],
                   category_ids, pp)


def has_labels(paths: Sequence[Path]) -> bool:
    """True when at least one of the images has a YOLO label file by the images -> labels convention."""
    for p in paths:
        try:
            if label_path_for(p).is_file():
                return True
        except ValueError:      # no `images` folder in the path: no conventional label location
            return False
    return False


def _check_sizes(gt: dict, ids: Sequence[int], infos: Sequence[TransformInfo], source: str) -> None:
    """Warn when decoded image sizes differ from the json's (e.g. EXIF rotation): boxes would not line up."""
    sizes = {im["id"]: (im.get("height"), im.get("width")) for im in gt["images"]}
    bad = [i for i, info in zip(ids, infos) if sizes.get(i, (None, None)) != (None, None)
           and tuple(sizes[i]) != tuple(info.orig_hw)]
    if bad:
        warnings.warn(f"{len(bad)} images decode to a size different from {source} (e.g. image id {bad[0]}: "
                      f"json {sizes[bad[0]]}, decoded {infos[ids.index(bad[0])].orig_hw}); their boxes may not "
                      f"line up", stacklevel=3)


__all__ = ["EvalSet", "has_labels"]
