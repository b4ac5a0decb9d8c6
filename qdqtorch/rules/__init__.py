"""TensorRT placement rules: tie quantizers that must share a scale (Concat, MaxPool, Resize, one tensor), quantize
residual shortcuts, keep head decoding float. Applied to a quantized model before calibration."""
from .apply import apply_tensorrt_rules
from .report import RulesReport, TiedGroup
from .tied import TiedQuantizer
from .trace import Graph, trace_graph

__all__ = ["apply_tensorrt_rules", "RulesReport", "TiedGroup", "TiedQuantizer", "Graph", "trace_graph"]
