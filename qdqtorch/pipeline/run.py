"""run_ptq: one whole PTQ job as the composition of the stages of `qdqtorch.ptq`."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Optional

from ..errors import UsageError
from ..host_memory import reuse_freed_memory
from ..ptq import PTQSettings, calibrate, evaluate, export, measure_jitter, prepare, recover, report
from ..ptq.checks import check_settings, stale_outputs
from ..quantize import save_calibration


@dataclass
class PTQResult:
    """What a PTQ run measured and wrote."""

    summary: Dict[str, Any]
    out: Path
    model: Any = field(repr=False, default=None)

    @property
    def ok(self) -> bool:
        """False when the Q/DQ check was requested and found errors."""
        check = self.summary.get("qdq_check")
        return not (check and check.get("errors"))


@reuse_freed_memory()
def run_ptq(settings: PTQSettings, *, progress: bool = True, log=print) -> PTQResult:
    """Run one PTQ job and write summary.json, report.md, calibration.json and model.qdq.onnx to settings.out."""
    for flag, value in (("--model", settings.model), ("--data", settings.data)):
        if not value:
            raise UsageError(f"{flag} is required (with neither --model nor --data, scripts/ptq.py runs the "
                             "embedded demo)")
    check_settings(settings)  # bad values, missing files/packages, unwritable --out: now, not after minutes
    out = Path(settings.out)
    out.mkdir(parents=True, exist_ok=True)
    for stale in stale_outputs(settings):
        stale.unlink()
        log(f"removed {stale} of an earlier run (--no-export: it would not match this run's summary)")
    prep = prepare(settings, evaluate_float=not settings.skip_float_eval, progress=progress, log=log)
    calibrate(prep, progress=progress)
    recover(prep, progress=progress, log=log)
    save_calibration(prep.model, out / "calibration.json")
    report(prep, out)  # what is done so far survives a later failure
    evaluate(prep, "int8", progress=progress, log=log)
    report(prep, out)  # the INT8 figures survive an interrupted jitter or a failed export
    measure_jitter(prep, progress=progress, log=log)
    if settings.export:
        onnx_path = export(prep, out)
        if settings.ort_eval:
            from ..export.runtime import OnnxRuntimeModule
            evaluate(prep, "int8_onnxruntime", OnnxRuntimeModule(onnx_path), progress=progress, log=log)
            measure_jitter(prep, "int8_onnxruntime", progress=progress, log=log)
    return PTQResult(report(prep, out), out, prep.model)


def run_ptq_from(config: Optional[str] = None, **overrides: Any) -> PTQResult:
    """run_ptq with settings from an optional YAML/JSON file, keyword arguments overriding it."""
    settings = PTQSettings.from_file(config, **overrides) if config else PTQSettings.from_dict(overrides)
    return run_ptq(settings)
