"""TiedQuantizer: one TensorQuantizer object shared by every site of a tied group, and the module hooks that apply
a quantizer to a module's output or input."""
from __future__ import annotations

import weakref
from collections import OrderedDict
from typing import Any, Optional

import torch
from torch import nn

from ..nn import TensorQuantizer

_RECENT = 32


class TiedQuantizer(TensorQuantizer):
    """A TensorQuantizer registered at several places of a model so that they all use one calibrator and one amax.

    Sharing the object is the tie: calibration sees the union of the sites' tensors and every site reads the same
    `_amax`. When a site receives a tensor this quantizer has just produced (the same tensor reaching a second
    consumer), it is passed through: the values are already on this grid, calibration does not count them twice
    and the exported graph holds one Q/DQ pair per tensor instead of one per consumer.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._recent: "OrderedDict[int, tuple]" = OrderedDict()

    def _produced(self, x: torch.Tensor) -> bool:
        entry = self._recent.get(id(x))
        return entry is not None and entry[0]() is x and entry[1] == x._version

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self._produced(x):
            return x
        y = super().forward(x)
        self._recent[id(y)] = (weakref.ref(y), y._version)
        self._recent.move_to_end(id(y))
        while len(self._recent) > _RECENT:
            self._recent.popitem(last=False)
        return y

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_recent"] = OrderedDict()  # weak references neither pickle nor deep-copy
        return state

    def extra_repr(self) -> str:
        return "tied " + super().extra_repr()


def input_attr(index: int) -> str:
    """Attribute name of the quantizer a rules pre-hook applies to a module's positional input `index`."""
    return f"_rules_input{index}_quantizer"


def quantize_input(module: nn.Module, args: tuple, *, index: int) -> Optional[tuple]:
    """Forward pre-hook: quantize positional input `index` with the quantizer stored under `input_attr(index)`."""
    if len(args) <= index or not isinstance(args[index], torch.Tensor):
        return None
    items = list(args)
    items[index] = getattr(module, input_attr(index))(items[index])
    return tuple(items)


def output_attr(index: Optional[int]) -> str:
    """Attribute name of the quantizer a rules hook applies to a module's output (item `index` of a tuple)."""
    return "_rules_output_quantizer" if index is None else f"_rules_output{index}_quantizer"


def quantize_output(module: nn.Module, args: tuple, output: Any, *, index: Optional[int] = None) -> Any:
    """Forward hook: quantize the module's output (or item `index` of a tuple/list output) with the quantizer
    stored on the module under `output_attr(index)`."""
    quantizer = getattr(module, output_attr(index))
    if index is None:
        return quantizer(output) if isinstance(output, torch.Tensor) else output
    if not isinstance(output, (tuple, list)) or len(output) <= index or not isinstance(output[index], torch.Tensor):
        return output
    items = list(output)
    items[index] = quantizer(items[index])
    if isinstance(output, list):
        return items
    return type(output)(*items) if hasattr(output, "_fields") else type(output)(items)
