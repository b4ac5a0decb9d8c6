"""Finding quantizers in a model and switching them on and off (also as context managers)."""
from __future__ import annotations

from typing import Callable, Iterator, List, Optional, Tuple

from torch import nn

from ..nn import QuantizerSnapshot, TensorQuantizer


def named_quantizers(model: nn.Module) -> Iterator[Tuple[str, TensorQuantizer]]:
    """(dotted name, quantizer) for every TensorQuantizer in the model, each once."""
    for name, module in model.named_modules():
        if isinstance(module, TensorQuantizer):
            yield name, module


def weight_quantizer_ids(model: nn.Module) -> set:
    """ids of the quantizers that quantize a parameter (`_weight_quantizer`) rather than an activation."""
    return {id(m._weight_quantizer) for m in model.modules() if isinstance(getattr(m, "_weight_quantizer", None),
                                                                           TensorQuantizer)}


class _Toggle:
    """Enables or disables selected quantizers now; restores their previous modes on `restore()` or context exit."""

    def __init__(self, module: nn.Module, disabled: bool, select: Optional[Callable[[str], bool]] = None) -> None:
        self._saved: List[Tuple[TensorQuantizer, QuantizerSnapshot]] = []
        for name, quantizer in named_quantizers(module):
            if select is None or select(name):
                self._saved.append((quantizer, quantizer.snapshot()))
                quantizer.set_mode(enabled=not disabled)

    def restore(self) -> None:
        """Put every touched quantizer back as it was."""
        for quantizer, snapshot in reversed(self._saved):
            quantizer.restore(snapshot)
        self._saved = []

    def __enter__(self) -> "_Toggle":
        return self

    def __exit__(self, *exc) -> None:
        self.restore()


class disable_quantization(_Toggle):
    """Disable every quantizer under `module` (optionally only those whose name `select` accepts).

    Call it to disable for good, or use `with disable_quantization(model.layer):` to disable temporarily.
    """

    def __init__(self, module: nn.Module, select: Optional[Callable[[str], bool]] = None) -> None:
        super().__init__(module, True, select)


class enable_quantization(_Toggle):
    """Enable every quantizer under `module`; as a context manager, restores the previous states on exit."""

    def __init__(self, module: nn.Module, select: Optional[Callable[[str], bool]] = None) -> None:
        super().__init__(module, False, select)
