"""qdqtorch: fake-quantization (Q/DQ) for PyTorch models deployed as INT8 on TensorRT.

Core names follow pytorch-quantization (`QuantDescriptor`, `TensorQuantizer`, `collect_stats`, `compute_amax`,
`_amax` buffers) so its scripts port by changing imports.
"""
from . import calib, nn, quant_modules
from .descriptor import (QUANT_DESC_8BIT_CONV_WEIGHT_PER_CHANNEL, QUANT_DESC_8BIT_CONVTRANSPOSE_WEIGHT_PER_CHANNEL,
                         QUANT_DESC_8BIT_HISTOGRAM, QUANT_DESC_8BIT_LINEAR_WEIGHT_PER_ROW, QUANT_DESC_8BIT_PER_TENSOR,
                         QuantDescriptor)
from .host_memory import reuse_freed_memory
from .nn import CalibrationError, TensorQuantizer
from .quantize import (QuantConfig, QuantReport, QuantSummary, calibrate, calibrate_weights, collect_stats,
                       compute_amax, disable_quantization, enable_quantization, load_calibration, named_quantizers,
                       quant_summary, quantize_model, save_calibration)

__version__ = "0.1.0"

__all__ = ["QuantDescriptor", "TensorQuantizer", "CalibrationError", "QuantConfig", "QuantReport", "QuantSummary",
           "quantize_model", "collect_stats", "compute_amax", "calibrate", "calibrate_weights",
           "disable_quantization", "enable_quantization", "named_quantizers", "quant_summary", "save_calibration",
           "load_calibration", "reuse_freed_memory", "calib", "nn", "quant_modules",
           "QUANT_DESC_8BIT_PER_TENSOR", "QUANT_DESC_8BIT_HISTOGRAM", "QUANT_DESC_8BIT_CONV_WEIGHT_PER_CHANNEL",
           "QUANT_DESC_8BIT_LINEAR_WEIGHT_PER_ROW", "QUANT_DESC_8BIT_CONVTRANSPOSE_WEIGHT_PER_CHANNEL"]
