"""check_qdq: static checks of a Q/DQ ONNX graph against what TensorRT needs for a fast, correct INT8 engine."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import onnx

from .checks.coverage import check_coverage, stats_qdq
from .checks.findings import QdqReport
from .checks.graph import GraphIndex, load_onnx_graph
from .checks.params import check_params
from .checks.precision import check_precision
from .checks.scales import check_scales


def check_qdq(path_or_model: str | Path | onnx.ModelProto, *, fp16: bool = False,
              allow_float: Sequence[str] = (), float_matmul: bool = True) -> QdqReport:
    """Check an ONNX model's Q/DQ placement and parameters; `allow_float` lists node-name globs that may stay
    unquantized (reported as warnings instead of errors). A MatMul of two activations (attention) with neither input
    quantized is the placement rules' choice (kept float): a warning, an error with `float_matmul=False`."""
    model, source = load_onnx_graph(path_or_model)
    g = GraphIndex(model)
    report = QdqReport(source=source)
    report.stats["nodes"] = len(g.nodes)
    report.stats["opset"] = g.opset
    stats_qdq(g, report)
    check_coverage(g, report, allow_float, float_matmul)
    check_params(g, report)
    check_scales(g, report)
    if fp16:
        check_precision(g, report)
    return report
