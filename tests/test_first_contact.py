"""A new user's first runs (issue 19): one default placement, errors before any heavy step, no hidden defaults,
no stale ONNX beside a new summary. Uses only the embedded demo."""
from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
import time

import pytest

from conftest import REPO_ROOT
from qdqtorch.errors import MissingDependencyError
from qdqtorch.pipeline import PTQSettings
from qdqtorch.ptq.checks import check_settings

PTQ = str(REPO_ROOT / "scripts" / "ptq.py")
SENS = str(REPO_ROOT / "scripts" / "sensitivity.py")
DEMO = REPO_ROOT / "assets" / "demo"
MODEL, DATA = DEMO / "shapes_detector.safetensors", DEMO / "shapes.yaml"


def run(script, *args):
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, script, *map(str, args)], capture_output=True, text=True, timeout=600)
    return proc, time.perf_counter() - start


def error_line(proc) -> str:
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    lines = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, proc.stderr[-2000:]
    return lines[0]


def test_one_default_placement_everywhere_and_none_opts_out():
    assert PTQSettings.from_dict({"model": "m.pt", "data": "d.yaml"}).rules == "tensorrt"
    assert PTQSettings.from_dict({"rules": "none"}).rules is None
    for script in (PTQ, SENS):
        text = " ".join(run(script, "-h")[0].stdout.split())
        assert "tensorrt (the default, what one ships" in text and "none (plain replacement)" in text
    for config in sorted((REPO_ROOT / "configs").glob("*.*")):
        assert PTQSettings.from_file(config).rules == "tensorrt", config.name


@pytest.mark.parametrize("script, args, expected", [
    (PTQ, ["--ignore", "model.(2"], "--ignore 'model.(2': not a valid regular expression"),
    (PTQ, ["--percentile", "150"], "--percentile must be in (0, 100]"),
    (PTQ, ["--calib-data", "no/such/folder"], "--calib-data no/such/folder: no such file"),
    (PTQ, ["--out", MODEL / "sub"], "is a file, not a folder"),
    (SENS, ["--budget", "abc"], "abc"),
    (SENS, ["--shard", "3/2"], "0 <= K < N"),
])
def test_bad_settings_fail_before_any_heavy_step(tmp_path, script, args, expected):
    """Each of these used to surface only after the float evaluation or the calibration."""
    proc, _ = run(script, "--model", MODEL, "--data", DATA, "--out", tmp_path / "o", "--num-calib", 4, *args)
    assert expected in error_line(proc)
    assert "float:" not in proc.stdout and "calibration:" not in proc.stderr   # nothing heavy ran


def test_missing_onnx_is_reported_before_the_run(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "onnxruntime" else real(name, *a))
    settings = PTQSettings.from_dict({"model": str(MODEL), "data": str(DATA), "ort_eval": True})
    with pytest.raises(MissingDependencyError, match=r'onnxruntime.*pip install -e "\.\[onnx\]"'):
        check_settings(settings)


def test_model_or_data_alone_names_no_file_the_user_never_typed(tmp_path):
    line = error_line(run(PTQ, "--model", MODEL, "--out", tmp_path)[0])
    assert "--data is required" in line and "coco128" not in line
    line = error_line(run(PTQ, "--data", DATA, "--out", tmp_path)[0])
    assert "--model is required" in line and "yolov8n" not in line


def test_no_export_into_an_old_folder_removes_the_previous_onnx(tmp_path):
    out = tmp_path / "o"
    out.mkdir()
    (out / "model.qdq.onnx").write_bytes(b"an earlier run's export")
    proc, _ = run(PTQ, "--model", MODEL, "--data", DATA, "--out", out, "--no-export", "--skip-float-eval",
                  "--num-calib", 4, "--num-eval", 4, "--imgsz", 128)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert not (out / "model.qdq.onnx").exists() and "removed" in proc.stdout
    summary = json.loads((out / "summary.json").read_text())
    assert "onnx" not in summary and summary["defaults"]["imgsz"] == "from the settings"
