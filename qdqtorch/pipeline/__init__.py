"""Whole jobs composed of the stages of `qdqtorch.ptq`: run_ptq (load -> quantize -> calibrate -> evaluate -> export
-> report); the scripts' shared error handling is `pipeline.cli`."""
from ..ptq import PTQSettings, table, write_reports
from .run import PTQResult, run_ptq, run_ptq_from

__all__ = ["PTQSettings", "PTQResult", "run_ptq", "run_ptq_from", "table", "write_reports"]
