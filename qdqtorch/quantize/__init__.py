"""Model-level quantization: replacement, calibration, switching quantizers, calibration state."""
from .calibrate import (AMAX_METHODS, calibrate, calibrate_weights, collect_stats, compute_amax, model_device,
                        run_batch, use_histogram_calibrators)
from .checks import uncalibrated_quantizers
from .config import QuantConfig, load_config_file, resolve_config, write_config_file
from .distributed import distributed_calibrate
from .control import disable_quantization, enable_quantization, named_quantizers, weight_quantizer_ids
from .replace import QuantReport, name_quantizers, quantize_model
from .state import QuantSummary, load_calibration, quant_summary, save_calibration

__all__ = ["QuantConfig", "QuantReport", "quantize_model", "name_quantizers", "collect_stats", "compute_amax",
           "calibrate", "calibrate_weights", "use_histogram_calibrators", "run_batch", "model_device", "AMAX_METHODS",
           "distributed_calibrate", "uncalibrated_quantizers",
           "disable_quantization", "enable_quantization", "named_quantizers", "weight_quantizer_ids",
           "save_calibration", "load_calibration", "quant_summary", "QuantSummary",
           "load_config_file", "write_config_file", "resolve_config"]
