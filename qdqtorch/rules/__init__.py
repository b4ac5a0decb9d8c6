"""TensorRT placement rules: tie quantizers that must share a scale (Concat, MaxPool, Resize, one tensor), keep residual
shortcuts float (or quantize them for Conv+Add fusion), keep head decoding float. Applied after `quantize_model`,
before calibration: `apply_placement(model, placement_from_name("tensorrt"), example_input)`."""
from .apply import apply_tensorrt_rules
from .placement import PLACEMENTS, TensorRTPlacement, apply_placement, placement_from_name
from .rules_report import RulesReport, TiedGroup
from .tied import TiedQuantizer
from .trace import Graph, trace_graph

__all__ = ["apply_tensorrt_rules", "apply_placement", "placement_from_name", "TensorRTPlacement", "PLACEMENTS",
           "RulesReport", "TiedGroup", "TiedQuantizer", "Graph", "trace_graph"]
