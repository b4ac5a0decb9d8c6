"""Preprocessing settings as plain data: one `Preprocess` per model input, round-tripping through dict/JSON/YAML."""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, List, Mapping, Optional, Sequence, Tuple, Union

from ..atomic import atomic_write_text
from ..errors import UsageError

RESIZE_MODES = ("letterbox", "resize")
COLOR_FORMATS = ("rgb", "bgr")
INTERPOLATIONS = ("auto", "linear", "area", "nearest", "cubic")
DTYPES = ("float32", "float16", "bfloat16")

# Accepted spellings besides the field names (xquant / TensorRT style configs).
_ALIASES = {"mean_value": "mean", "std_value": "std", "img_size": "imgsz", "color_format": "color"}


class PreprocessError(UsageError):
    """A preprocessing setting is invalid; the message names the field."""


@dataclass
class Preprocess:
    """How images become one model input: geometry, colour order, normalisation and dtype (or a custom hook).

    The pixel transform is ``(pixel - mean) / std`` per channel, after the colour conversion, in 0-255 space,
    so YOLO's "divide by 255" is ``mean=0, std=255`` (the default). Tensor files (.npy/.raw) are used as they
    are: only their shape (`channels`, `imgsz`) and `dtype` apply.
    """

    imgsz: Union[int, List[int]] = 640          # square side or [height, width]
    channels: int = 3
    resize: str = "letterbox"                   # "letterbox": keep ratio and pad; "resize": stretch to imgsz
    pad_value: int = 114
    stride: int = 32                            # imgsz must be a multiple of it (letterbox only)
    center: bool = True                         # letterbox: pad both sides (True) or only right/bottom
    scaleup: bool = True                        # letterbox: allow enlarging small images
    interpolation: str = "auto"                 # "auto": area when shrinking, linear when enlarging
    color: str = "rgb"
    mean: Union[float, List[float]] = 0.0       # one value per channel (a scalar applies to all)
    std: Union[float, List[float]] = 255.0
    dtype: str = "float32"
    hook: Optional[str] = None                  # "path/to/file.py:function" or "package.module:function"

    def __post_init__(self) -> None:
        self.validate()

    # ----------------------------------------------------------------------------------------------------- shape
    @property
    def hw(self) -> Tuple[int, int]:
        """Target (height, width)."""
        if isinstance(self.imgsz, int):
            return (self.imgsz, self.imgsz)
        return (int(self.imgsz[0]), int(self.imgsz[1]))

    @property
    def input_shape(self) -> Tuple[int, int, int]:
        """Per-sample tensor shape (C, H, W)."""
        return (self.channels, *self.hw)

    # ------------------------------------------------------------------------------------------------ validation
    def validate(self) -> None:
        """Check every field and normalise scalars/tuples to the canonical form; raise PreprocessError naming it."""
        if isinstance(self.imgsz, (list, tuple)):
            if len(self.imgsz) == 1:
                self.imgsz = int(self.imgsz[0])
            elif len(self.imgsz) != 2:
                raise PreprocessError(f"preprocess field 'imgsz' must be an int or [height, width], got {self.imgsz!r}")
            else:
                self.imgsz = [int(v) for v in self.imgsz]
        if not isinstance(self.imgsz, (int, list)) or isinstance(self.imgsz, bool):
            raise PreprocessError(f"preprocess field 'imgsz' must be an int or [height, width], got {self.imgsz!r}")
        if min(self.hw) <= 0:
            raise PreprocessError(f"preprocess field 'imgsz' must be positive, got {self.imgsz!r}")
        if self.channels <= 0:
            raise PreprocessError(f"preprocess field 'channels' must be positive, got {self.channels!r}")
        _check_choice("resize", self.resize, RESIZE_MODES)
        _check_choice("color", self.color, COLOR_FORMATS)
        _check_choice("interpolation", self.interpolation, INTERPOLATIONS)
        _check_choice("dtype", self.dtype, DTYPES)
        if self.stride <= 0:
            raise PreprocessError(f"preprocess field 'stride' must be positive, got {self.stride!r}")
        if self.resize == "letterbox" and any(v % self.stride for v in self.hw):
            nearest = self.stride * max(1, round(self.hw[0] / self.stride))
            raise PreprocessError(f"preprocess field 'imgsz' {self.imgsz!r} is not a multiple of 'stride' "
                                  f"{self.stride}: pick a multiple (e.g. {nearest}), or set 'stride: 1' for a model "
                                  f"without that constraint")
        self.mean = _per_channel("mean", self.mean, self.channels)
        self.std = _per_channel("std", self.std, self.channels)
        if any(s == 0 for s in self.std):
            raise PreprocessError(f"preprocess field 'std' must not contain 0, got {self.std!r}")
        if self.hook is not None and (not isinstance(self.hook, str) or ":" not in self.hook):
            raise PreprocessError(f"preprocess field 'hook' must look like 'path/to/file.py:function', "
                                  f"got {self.hook!r}")

    # --------------------------------------------------------------------------------------------- serialisation
    def to_dict(self) -> dict:
        """Plain JSON/YAML-safe dict of all fields."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "Preprocess":
        """Build from a dict; aliases `mean_value`/`std_value`/`input_shape` accepted; unknown keys are an error."""
        if isinstance(data, Preprocess):
            return data
        if not isinstance(data, Mapping):
            raise PreprocessError(f"preprocess settings must be a mapping, got {type(data).__name__}")
        known = {f.name for f in fields(cls)}
        kwargs: dict = {}
        for key, value in data.items():
            if key == "input_shape":        # [C, H, W] or [N, C, H, W]
                shape = list(value)
                if len(shape) not in (3, 4):
                    raise PreprocessError(f"preprocess key 'input_shape' must be [C, H, W] or [N, C, H, W], "
                                          f"got {value!r}")
                kwargs["channels"], kwargs["imgsz"] = int(shape[-3]), [int(shape[-2]), int(shape[-1])]
                continue
            name = _ALIASES.get(key, key)
            if name not in known:
                raise PreprocessError(f"unknown preprocess key {key!r}; valid keys: {sorted(known | {'input_shape'})}")
            if name in kwargs:
                raise PreprocessError(f"preprocess key {key!r} given twice (directly and through an alias)")
            kwargs[name] = value
        return cls(**kwargs)

    def to_json(self) -> str:
        """JSON text of `to_dict()`."""
        return json.dumps(self.to_dict(), indent=2)

    @classmethod
    def yolo(cls, imgsz: Union[int, Sequence[int]] = 640, **overrides: Any) -> "Preprocess":
        """YOLO's evaluation preprocessing: letterbox with gray 114 padding, RGB, divide by 255."""
        return cls(imgsz=list(imgsz) if not isinstance(imgsz, int) else imgsz, **overrides)


def _check_choice(name: str, value: Any, choices: Sequence[str]) -> None:
    if value not in choices:
        raise PreprocessError(f"preprocess field {name!r} must be one of {list(choices)}, got {value!r}")


def _per_channel(name: str, value: Any, channels: int) -> List[float]:
    """Expand a scalar to one value per channel and check the length of a list."""
    if isinstance(value, (int, float)):
        return [float(value)] * channels
    try:
        values = [float(v) for v in value]
    except (TypeError, ValueError):
        raise PreprocessError(f"preprocess field {name!r} must be a number or a list of numbers, "
                              f"got {value!r}") from None
    if len(values) == 1:
        values = values * channels
    if len(values) != channels:
        raise PreprocessError(f"preprocess field {name!r} has {len(values)} values but 'channels' is {channels}")
    return values


def load_preprocess(path: Union[str, Path]) -> Union[Preprocess, List[Preprocess]]:
    """Read preprocessing settings from a .json/.yaml file: one mapping, or a list of mappings for multi-input."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"preprocess file not found: {path}")
    text = path.read_text()
    if path.suffix.lower() == ".json":
        data = json.loads(text)
    else:
        import yaml
        data = yaml.safe_load(text)
    try:
        if isinstance(data, list):
            return [Preprocess.from_dict(d) for d in data]
        return Preprocess.from_dict(data or {})
    except PreprocessError as err:
        raise PreprocessError(f"{path}: {err}") from None


def save_preprocess(settings: Union[Preprocess, Sequence[Preprocess]], path: Union[str, Path]) -> None:
    """Write settings (one or a list) to .json or .yaml, readable back by `load_preprocess`."""
    path = Path(path)
    data = [s.to_dict() for s in settings] if isinstance(settings, (list, tuple)) else settings.to_dict()
    if path.suffix.lower() == ".json":
        atomic_write_text(path, json.dumps(data, indent=2) + "\n")
    else:
        import yaml
        atomic_write_text(path, yaml.safe_dump(data, sort_keys=False))
