"""TensorRT placement rules: tie quantizers that must share a scale (Concat, MaxPool, Resize, one tensor), keep residual
shortcuts float (or quantize them for Conv+Add fusion), keep head decoding float. Applied before calibration."""
from .apply import apply_tensorrt_rules
from .report import RulesReport, TiedGroup
from .tied import TiedQuantizer
from .trace import Graph, trace_graph

__all__ = ["apply_tensorrt_rules", "RulesReport", "TiedGroup", "TiedQuantizer", "Graph", "trace_graph"]
