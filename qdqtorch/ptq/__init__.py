"""The PTQ stages and their settings: prepare -> calibrate -> (recover) -> evaluate -> (measure_jitter) -> export ->
report over one `Prepared` value.

Below `qdqtorch.sensitivity` and `qdqtorch.pipeline`, so the sweep's session and `run_ptq` build on the same stages.
"""
from .report import SUMMARY_FIELDS, table, versions, write_reports
from .settings import RECOVER_CHOICES, PTQSettings
from .stages import (EVALUATIONS, Prepared, calibrate, calibration_data, calibration_kwargs, check_labels, eval_kwargs,
                     eval_set_for, evaluate, export, load_float, measure_jitter, prepare, quant_config_for, quantize,
                     recover, report, samples_in, take_reference)

__all__ = ["PTQSettings", "RECOVER_CHOICES", "Prepared", "prepare", "calibrate", "evaluate", "measure_jitter", "export",
           "recover", "report", "load_float", "check_labels", "take_reference",
           "quant_config_for", "quantize", "eval_set_for", "calibration_data", "calibration_kwargs", "eval_kwargs",
           "samples_in", "EVALUATIONS", "SUMMARY_FIELDS", "table", "versions", "write_reports"]
