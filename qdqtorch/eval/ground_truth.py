"""Ground truth as a COCO-format dict: from a COCO instances json, or converted in memory from YOLO label files."""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple, Union

import numpy as np

from ..errors import UsageError

PathLike = Union[str, Path]


def label_path_for(image_path: PathLike, labels_dir: Optional[PathLike] = None) -> Path:
    """The YOLO label file of an image: `labels_dir/<stem>.txt`, or by the Ultralytics convention the same path
    with the last `images` folder replaced by `labels` and the suffix by `.txt`."""
    image_path = Path(image_path)
    if labels_dir is not None:
        return Path(labels_dir) / (image_path.stem + ".txt")
    parts = list(image_path.parts)
    for i in range(len(parts) - 2, -1, -1):
        if parts[i] == "images":
            parts[i] = "labels"
            return Path(*parts).with_suffix(".txt")
    raise UsageError(f"{image_path}: cannot locate its YOLO label file (no 'images' folder in the path); "
                     f"pass the labels folder explicitly")


def read_yolo_labels(path: PathLike) -> np.ndarray:
    """(n, 5) rows `class cx cy w h` (normalised); polygon rows become their bounding box; no file → no rows."""
    path = Path(path)
    if not path.is_file():
        return np.zeros((0, 5))
    rows = []
    for lineno, line in enumerate(path.read_text().splitlines(), 1):
        vals = line.split()
        if not vals:
            continue
        try:
            nums = [float(v) for v in vals]
        except ValueError:
            raise UsageError(f"{path}:{lineno}: not a YOLO label line (expected numbers): {line!r}") from None
        if len(nums) == 5:
            rows.append(nums)
        elif len(nums) >= 7 and len(nums) % 2 == 1:         # class x1 y1 x2 y2 ... (segment polygon)
            xs, ys = np.array(nums[1::2]), np.array(nums[2::2])
            x0, x1, y0, y1 = xs.min(), xs.max(), ys.min(), ys.max()
            rows.append([nums[0], (x0 + x1) / 2, (y0 + y1) / 2, x1 - x0, y1 - y0])
        else:
            raise UsageError(f"{path}:{lineno}: expected 'class cx cy w h' (or a polygon), got {len(nums)} values")
    arr = np.array(rows, dtype=np.float64).reshape(-1, 5)
    if arr.size and ((arr[:, 0] < 0).any() or (arr[:, 0] != np.round(arr[:, 0])).any()):
        raise UsageError(f"{path}: class indices must be non-negative integers")
    return arr


def image_ids_for(paths: Sequence[PathLike]) -> List[int]:
    """COCO-style image ids: the numeric file stems when all are numeric and unique (000000000139.jpg → 139),
    else 1..N in order."""
    stems = [Path(p).stem for p in paths]
    if all(s.isdigit() for s in stems):
        ids = [int(s) for s in stems]
        if len(set(ids)) == len(ids):
            return ids
    return list(range(1, len(paths) + 1))


def yolo_to_coco(image_paths: Sequence[PathLike], image_hw: Sequence[Tuple[int, int]], names: Sequence[str],
                 category_ids: Sequence[int], labels_dir: Optional[PathLike] = None) -> dict:
    """A COCO instances dict for `image_paths` from their YOLO labels; class i becomes `category_ids[i]`,
    boxes are in pixels of the given (height, width), area = w*h, iscrowd 0."""
    if len(category_ids) != len(names):
        raise UsageError(f"{len(names)} class names but {len(category_ids)} category ids")
    img_ids = image_ids_for(image_paths)
    images, annotations = [], []
    for path, img_id, (h, w) in zip(image_paths, img_ids, image_hw):
        images.append({"id": img_id, "file_name": Path(path).name, "height": int(h), "width": int(w)})
        label_file = label_path_for(path, labels_dir)
        labels = read_yolo_labels(label_file)
        if labels.size and labels[:, 0].max() >= len(category_ids):
            raise UsageError(f"{label_file}: class {int(labels[:, 0].max())} but the dataset has only "
                             f"{len(category_ids)} classes ({len(names)} names)")
        for cls, cx, cy, bw, bh in labels:
            box = [(cx - bw / 2) * w, (cy - bh / 2) * h, bw * w, bh * h]
            annotations.append({"id": len(annotations) + 1,    # ids from 1: COCOeval treats id 0 as "no match"
                                "image_id": img_id, "category_id": int(category_ids[int(cls)]),
                                "bbox": [float(v) for v in box], "area": float(box[2] * box[3]), "iscrowd": 0})
    categories = [{"id": int(c), "name": str(n)} for c, n in zip(category_ids, names)]
    return {"images": images, "annotations": annotations, "categories": categories}


def load_coco_json(path: PathLike) -> dict:
    """Read a COCO instances json and check it has the keys evaluation needs."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"COCO annotation file not found: {path}")
    with open(path) as f:
        data = json.load(f)
    missing = [k for k in ("images", "annotations", "categories") if k not in data]
    if missing:
        raise UsageError(f"{path}: not a COCO instances file (missing {missing})")
    return data


def match_coco_images(image_paths: Sequence[PathLike], gt: dict,
                      source: str = "annotations") -> Tuple[List[int], List[int]]:
    """Image ids of `image_paths` in a COCO dict, matched by file name; returns (positions found, their ids)."""
    by_name: Dict[str, int] = {os.path.basename(im["file_name"]): im["id"] for im in gt["images"]}
    found, ids = [], []
    for k, p in enumerate(image_paths):
        img_id = by_name.get(Path(p).name)
        if img_id is not None:
            found.append(k)
            ids.append(img_id)
    if not found:
        raise UsageError(f"none of the {len(image_paths)} images (e.g. {Path(image_paths[0]).name}) appear in "
                         f"{source}; are these the right images for this annotation file?")
    return found, ids


def subset_coco(gt: dict, image_ids: Sequence[int]) -> dict:
    """The COCO dict restricted to `image_ids` (keeps all categories)."""
    keep = set(image_ids)
    return {"images": [im for im in gt["images"] if im["id"] in keep],
            "annotations": [a for a in gt["annotations"] if a["image_id"] in keep],
            "categories": list(gt["categories"])}
