"""ONNX export of fake-quantized models as Q/DQ graphs, and a checker of such graphs for TensorRT INT8."""
from __future__ import annotations

from typing import Any

from .checker import check_qdq
from .checks.findings import Finding, QdqReport

__all__ = ["check_qdq", "export_onnx", "Finding", "QdqReport"]


def __getattr__(name: str) -> Any:
    # export_onnx needs torch; import it lazily so the checker works on machines with onnx only.
    if name == "export_onnx":
        from .onnx_export import export_onnx
        return export_onnx
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
