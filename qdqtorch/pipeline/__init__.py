"""One PTQ job as a function: load -> quantize -> calibrate -> evaluate -> export -> report."""
from .report import table, write_reports
from .run import PTQResult, run_ptq, run_ptq_from
from .settings import PTQSettings

__all__ = ["PTQSettings", "PTQResult", "run_ptq", "run_ptq_from", "table", "write_reports"]
