"""COCO category ids: the 80 contiguous detector classes versus the 91-id (with gaps) COCO annotation scheme."""
from __future__ import annotations

from typing import List, Optional, Sequence

from ..errors import UsageError

# Category id (1..90, with gaps) of each of the 80 classes in COCO's annotation files, in class-index order.
COCO80_TO_91: List[int] = [
    1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23, 24, 25, 27, 28, 31, 32, 33,
    34, 35, 36, 37, 38, 39, 40, 41, 42, 43, 44, 46, 47, 48, 49, 50, 51, 52, 53, 54, 55, 56, 57, 58, 59, 60, 61,
    62, 63, 64, 65, 67, 70, 72, 73, 74, 75, 76, 77, 78, 79, 80, 81, 82, 84, 85, 86, 87, 88, 89, 90,
]

# Class names as YOLO dataset files spell them (COCO's own json uses the same words).
COCO80_NAMES: List[str] = [
    "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat", "traffic light",
    "fire hydrant", "stop sign", "parking meter", "bench", "bird", "cat", "dog", "horse", "sheep", "cow",
    "elephant", "bear", "zebra", "giraffe", "backpack", "umbrella", "handbag", "tie", "suitcase", "frisbee",
    "skis", "snowboard", "sports ball", "kite", "baseball bat", "baseball glove", "skateboard", "surfboard",
    "tennis racket", "bottle", "wine glass", "cup", "fork", "knife", "spoon", "bowl", "banana", "apple",
    "sandwich", "orange", "broccoli", "carrot", "hot dog", "pizza", "donut", "cake", "chair", "couch",
    "potted plant", "bed", "dining table", "toilet", "tv", "laptop", "mouse", "remote", "keyboard", "cell phone",
    "microwave", "oven", "toaster", "sink", "refrigerator", "book", "clock", "vase", "scissors", "teddy bear",
    "hair drier", "toothbrush",
]


def is_coco80(names: Optional[Sequence[str]]) -> bool:
    """True when `names` are the 80 COCO classes in the standard order."""
    return names is not None and [str(n).strip().lower() for n in names] == COCO80_NAMES


def coco80_to_91(class_index: int) -> int:
    """COCO category id of a contiguous class index 0..79."""
    if not 0 <= class_index < 80:
        raise UsageError(f"COCO class index must be in 0..79, got {class_index}")
    return COCO80_TO_91[class_index]


def coco91_to_80(category_id: int) -> int:
    """Contiguous class index 0..79 of a COCO category id."""
    try:
        return COCO80_TO_91.index(category_id)
    except ValueError:
        raise UsageError(f"{category_id} is not one of the 80 COCO detection category ids") from None
