"""Checks of a PTQ job's settings that need no model or data loaded: run before the first heavy step, so a typo
fails in a second instead of after minutes of float evaluation or calibration."""
from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, List

from ..errors import UsageError
from ..optional import check_installed

ONNX_NAME = "model.qdq.onnx"


def _is_spec(value: str) -> bool:
    """'package.module:function' (a Python callable), not a path (Windows drive letters aside)."""
    return ":" in value and not Path(value).exists() and not re.match(r"^[A-Za-z]:[\\/]", value)


def check_out_folder(out: Path) -> None:
    """The output folder (or the nearest existing parent that would hold it) must be writable."""
    probe = out
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    if probe.exists() and not probe.is_dir():
        raise UsageError(f"--out {out}: {probe} is a file, not a folder")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise UsageError(f"--out {out}: {probe} is not writable; choose another output folder")


def check_settings(settings: Any) -> None:
    """Everything about `settings` (a PTQSettings) that can be checked without loading anything heavy."""
    for pattern in settings.ignore:
        try:
            re.compile(pattern)
        except re.error as exc:
            raise UsageError(f"--ignore {pattern!r}: not a valid regular expression ({exc})") from None
    if not 0 < settings.percentile <= 100:
        raise UsageError(f"--percentile must be in (0, 100], got {settings.percentile}")
    for flag, value in (("--model", settings.model), ("--data", settings.data), ("--calib-data", settings.calib_data)):
        if value is None or _is_spec(str(value)):
            continue
        path = Path(value).expanduser()
        if not path.exists() and not (flag == "--model" and path.suffix in (".yaml", ".yml")
                                      and path.parent == Path(".")):
            raise FileNotFoundError(f"{flag} {value}: no such file or folder (nothing is downloaded: pass a local "
                                    "path)")
    check_out_folder(Path(settings.out))
    if settings.export:
        check_installed("onnx", "onnx", "onnx", "the ONNX export (turn it off with --no-export)")
    if settings.ort_eval:
        if not settings.export:
            raise UsageError("--ort-eval scores the exported ONNX: it cannot be combined with --no-export")
        check_installed("onnxruntime", "onnxruntime", "onnx", "--ort-eval (scoring the ONNX in ONNX Runtime)")


def stale_outputs(settings: Any) -> List[Path]:
    """Files in the output folder from an earlier run that this run would leave beside its new summary: with
    --no-export, the previous model.qdq.onnx (it no longer matches summary.json)."""
    old = Path(settings.out) / ONNX_NAME
    return [old] if not settings.export and old.exists() else []
