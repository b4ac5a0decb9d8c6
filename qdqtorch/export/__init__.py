"""ONNX export of fake-quantized models as Q/DQ graphs, and a checker of such graphs for TensorRT INT8."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from .checker import check_qdq
from .checks.findings import Finding, QdqReport

__all__ = ["check_qdq", "export_onnx", "onnx_opset", "Finding", "QdqReport"]


def onnx_opset(path: str | Path) -> int:
    """The default-domain opset an ONNX file was written at (read without loading its weights)."""
    import onnx
    proto = onnx.load(str(path), load_external_data=False)
    return next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), 0)


def __getattr__(name: str) -> Any:
    # export_onnx needs torch; import it lazily so the checker works on machines with onnx only.
    if name == "export_onnx":
        from .onnx_export import export_onnx
        return export_onnx
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
