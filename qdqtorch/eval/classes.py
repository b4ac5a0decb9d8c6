"""Does the model predict the dataset's classes? If not, mAP against its labels is noise and fidelity is the score."""
from __future__ import annotations

from typing import Optional, Sequence


def _generic(names: Sequence[str]) -> bool:
    """Placeholder names ("0", "1", ... or "class0", ...): a model or dataset that does not name its classes."""
    return all(str(n).strip().lower().removeprefix("class").strip("_ ").isdigit() for n in names)


def _shown(names: Sequence[str], limit: int = 6) -> str:
    names = [str(n) for n in names]
    more = f", ... ({len(names)} in all)" if len(names) > limit else ""
    return "[" + ", ".join(names[:limit]) + more + "]"


def class_mismatch(model_names: Sequence[str], data_names: Sequence[str], *,
                   data: str = "the dataset") -> Optional[str]:
    """A one-line explanation when the model's classes are not the dataset's (count, or names when both name
    them), else None. Names compare case-insensitively."""
    model_names, data_names = [str(n) for n in model_names], [str(n) for n in data_names]
    if len(model_names) == len(data_names):
        if _generic(model_names) or _generic(data_names):
            return None
        if [n.strip().lower() for n in model_names] == [n.strip().lower() for n in data_names]:
            return None
        what = "names"
    else:
        what = "count"
    return (f"the model's {len(model_names)} classes {_shown(model_names)} are not the {len(data_names)} classes of "
            f"{data} {_shown(data_names)} (class {what} differs): mAP against these labels means nothing, so the "
            f"score is fidelity (agreement with the float model's own detections); pass a dataset labelled with the "
            f"model's classes for mAP")


__all__ = ["class_mismatch"]
