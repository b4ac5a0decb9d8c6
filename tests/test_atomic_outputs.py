"""Outputs are written atomically: normal permissions, the file named on failure, no truncated file left behind."""
from __future__ import annotations

import errno
import os
import stat

import onnx
import pytest
import torch
from torch import nn

from qdqtorch import calibrate, quantize_model, save_calibration
from qdqtorch.export import export_onnx
from qdqtorch.ptq.report import write_reports


def _mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


@pytest.fixture
def umask_022():
    old = os.umask(0o022)
    yield
    os.umask(old)


def _calibrated() -> nn.Module:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 2, 1)).eval()
    quantize_model(model)
    calibrate(model, [torch.randn(2, 3, 8, 8)], 1, method="max", progress=False)
    return model


def test_outputs_get_normal_permissions(tmp_path, umask_022):
    """summary.json, report.md and calibration.json are readable like any new file: 0666 minus the umask."""
    summary = {"settings": {"model": "m.pt", "calib_method": "max", "weight_method": "max", "imgsz": 64,
                            "batch": 1, "device": "cpu", "percentile": 99.9}, "data": {}}
    write_reports(summary, tmp_path)
    save_calibration(_calibrated(), tmp_path / "calibration.json")
    save_calibration(_calibrated(), tmp_path / "calibration.safetensors")   # safetensors itself creates 0600
    for name in ("summary.json", "report.md", "calibration.json", "calibration.safetensors"):
        assert _mode(tmp_path / name) == 0o644, name
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_failed_onnx_export_keeps_the_previous_file_and_names_the_path(tmp_path, monkeypatch):
    """A disk-full during the ONNX save leaves no truncated model.qdq.onnx and no temp file; the error names it."""
    model = _calibrated()
    target = tmp_path / "model.qdq.onnx"
    export_onnx(model, torch.randn(1, 3, 8, 8), target)
    before = target.read_bytes()
    onnx.load(str(target))

    real_save = onnx.save

    def disk_full(proto, path, *args, **kwargs):
        with open(path, "wb") as fh:                   # half the bytes, then the disk is full
            fh.write(proto.SerializeToString()[:100])
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(onnx, "save", disk_full)
    with pytest.raises(OSError) as info:
        export_onnx(model, torch.randn(1, 3, 8, 8), target)
    assert str(target) in str(info.value) and "No space left" in str(info.value)
    monkeypatch.setattr(onnx, "save", real_save)
    assert target.read_bytes() == before                # the previous export is intact and loads
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.qdq.onnx"]


def test_failed_write_names_the_file_and_leaves_no_temp(tmp_path):
    """A write that cannot complete (here a folder in the way of summary.json) names the file, leaves no temp."""
    (tmp_path / "summary.json").mkdir()
    with pytest.raises(OSError, match="summary.json"):
        write_reports({"settings": {}, "data": {}}, tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["summary.json"]
