"""Turning a data source (folder, list file, dataset yaml split, tensor files) into a sorted list of sample files."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, List, Optional, Sequence, Union

from .image_io import IMAGE_EXTENSIONS
from ..errors import UsageError

TENSOR_EXTENSIONS = (".npy", ".raw", ".bin")
SAMPLE_EXTENSIONS = IMAGE_EXTENSIONS + TENSOR_EXTENSIONS
LIST_EXTENSIONS = (".txt",)
YAML_EXTENSIONS = (".yaml", ".yml")
SPLITS = ("train", "val", "test")

Source = Union[str, Path, Sequence[Union[str, Path]]]


class MissingSplitError(UsageError, KeyError):
    """A dataset yaml has no entry for the requested split."""


class EmptySourceError(UsageError):
    """A data source resolved to no usable files."""


def is_sample_file(path: Path) -> bool:
    """True for an image or tensor file we can load."""
    return path.suffix.lower() in SAMPLE_EXTENSIONS and not path.name.startswith(".")


def list_folder(folder: Union[str, Path]) -> List[Path]:
    """All image/tensor files under `folder`, recursively, sorted by path."""
    folder = Path(folder)
    found = [Path(root) / name for root, _, names in os.walk(folder, followlinks=True) for name in names]
    return sorted(p for p in found if is_sample_file(p))


def read_list_file(path: Union[str, Path]) -> List[Path]:
    """Paths listed one per line, relative ones against the list file's folder; blanks and # comments skipped."""
    path = Path(path)
    base = path.resolve().parent
    out: List[Path] = []
    for lineno, raw in enumerate(path.read_text().splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        entry = Path(line)
        entry = entry if entry.is_absolute() else base / entry
        if entry.is_dir():
            out.extend(list_folder(entry))
        elif not entry.exists():
            raise FileNotFoundError(f"{path}:{lineno}: listed file does not exist: {entry}")
        else:
            out.append(entry)
    return out


def dataset_root(yaml_path: Union[str, Path], data: dict) -> Path:
    """The folder a dataset yaml's splits are relative to: its `path:` key (absolute, or relative to the yaml's
    folder, else to the working directory), or the yaml's own folder when absent."""
    yaml_dir = Path(yaml_path).resolve().parent
    root = data.get("path")
    if not root:
        return yaml_dir
    root = Path(str(root)).expanduser()
    if root.is_absolute():
        candidates = [root]
    else:
        candidates = [yaml_dir / root, Path.cwd() / root]
    for cand in candidates:
        if cand.is_dir():
            return cand.resolve()
    raise FileNotFoundError(f"{yaml_path}: dataset 'path: {data['path']}' not found (tried "
                            + ", ".join(str(c) for c in candidates) + ")")


def load_dataset_yaml(yaml_path: Union[str, Path]) -> dict:
    """Parse an Ultralytics dataset yaml, with a clear error when it is not a mapping."""
    import yaml

    yaml_path = Path(yaml_path)
    if not yaml_path.is_file():
        raise FileNotFoundError(f"dataset yaml not found: {yaml_path}")
    data = yaml.safe_load(yaml_path.read_text())
    if not isinstance(data, dict):
        raise UsageError(f"{yaml_path}: not a dataset yaml (expected a mapping with train:/val: keys)")
    return data


def dataset_split(yaml_path: Union[str, Path], split: str = "train") -> List[Path]:
    """Files of one split (`train`/`val`/`test`) of an Ultralytics dataset yaml; entries may be folders,
    list files or lists of these, relative to the dataset root."""
    data = load_dataset_yaml(yaml_path)
    if split not in data or not data[split]:
        present = [s for s in SPLITS if data.get(s)]
        raise MissingSplitError(f"{yaml_path}: no '{split}:' split (present: {present or 'none'})")
    root = dataset_root(yaml_path, data)
    entries = data[split] if isinstance(data[split], (list, tuple)) else [data[split]]
    files: List[Path] = []
    for entry in entries:
        p = Path(str(entry)).expanduser()
        p = p if p.is_absolute() else root / p
        if not p.exists():
            raise FileNotFoundError(f"{yaml_path}: '{split}: {entry}' not found at {p}")
        files.extend(_expand_path(p, split=split))
    if not files:
        raise EmptySourceError(f"{yaml_path}: split '{split}' ({', '.join(map(str, entries))}) holds no images")
    return files


def dataset_names(yaml_path: Union[str, Path]) -> Optional[List[str]]:
    """Class names of a dataset yaml (`names:` as a list or an {index: name} mapping), None when absent."""
    names: Any = load_dataset_yaml(yaml_path).get("names")
    if names is None:
        return None
    if isinstance(names, dict):
        keys = sorted(int(k) for k in names)
        if keys != list(range(len(keys))):
            raise UsageError(f"{yaml_path}: 'names' indices must be 0..{len(keys) - 1}, got {keys}")
        return [str(names[k]) for k in keys]
    return [str(n) for n in names]


def _split_yaml_spec(text: str) -> Optional[tuple]:
    """'data.yaml:val' → (Path('data.yaml'), 'val') when that file exists."""
    head, sep, tail = text.rpartition(":")
    if sep and tail in SPLITS and Path(head).suffix.lower() in YAML_EXTENSIONS and Path(head).is_file():
        return Path(head), tail
    return None


def _expand_path(p: Path, split: str) -> List[Path]:
    if p.is_dir():
        return list_folder(p)
    suffix = p.suffix.lower()
    if suffix in LIST_EXTENSIONS:
        return read_list_file(p)
    if suffix in YAML_EXTENSIONS:
        return dataset_split(p, split)
    if not is_sample_file(p):
        raise UsageError(f"{p}: unsupported file type '{p.suffix}'; expected a folder, a .txt list, a dataset "
                         f".yaml, an image ({', '.join(IMAGE_EXTENSIONS[:4])}, ...) or a .npy/.raw/.bin tensor")
    return [p]


def resolve_source(source: Source, split: str = "train") -> List[Path]:
    """Files of one input's source: a folder (recursive), a .txt list, a dataset yaml (`split`, or 'data.yaml:val'),
    one file, or a list of any of these. An empty result is an error naming the source."""
    if isinstance(source, (list, tuple)):
        files: List[Path] = []
        for item in source:
            files.extend(resolve_source(item, split))
        if not files:
            raise EmptySourceError("the data source list is empty")
        return files
    text = str(source)
    spec = _split_yaml_spec(text)
    if spec is not None:
        return dataset_split(*spec)
    p = Path(text).expanduser()
    if not p.exists():
        raise FileNotFoundError(f"data source not found: {p}")
    files = _expand_path(p, split)
    if not files:
        kinds = "images or .npy/.raw/.bin files"
        raise EmptySourceError(f"data source {p} is empty: found no {kinds}"
                               + (" (searched recursively)" if p.is_dir() else ""))
    return files
