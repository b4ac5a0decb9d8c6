"""scripts/ptq.py end to end on the real checkpoint and images (small: 8 images at 256 px)."""
import json
import subprocess
import sys

import onnx
import pytest

from conftest import REPO_ROOT, YOLOV5_REPO_FIXTURE
from qdqtorch.export import check_qdq

SCRIPT = str(REPO_ROOT / "scripts" / "ptq.py")


def run_script(*args):
    return subprocess.run([sys.executable, SCRIPT, *map(str, args)], capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def ptq_run(yolov5n_path, coco128_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("ptq")
    config = out / "settings.yaml"
    config.write_text("calib_method: percentile\npercentile: 99.9\nnum_calib: 4\n"
                      "quant:\n  ignore: ['model\\.24\\.m\\.2']\n")
    proc = run_script("--config", config, "--model", yolov5n_path, "--repo", YOLOV5_REPO_FIXTURE,
                      "--data", coco128_dir / "coco128.yaml", "--num-calib", 8, "--num-eval", 8, "--imgsz", 256,
                      "--batch", 4, "--out", out, "--ort-eval", "--check", "--rules", "none")  # plain replacement
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out, proc


def test_summary_has_float_and_int8_numbers(ptq_run):
    out, proc = ptq_run
    summary = json.loads((out / "summary.json").read_text())
    for key in ("float", "int8", "int8_onnxruntime"):
        assert 0.1 < summary[key]["map50_95"] < summary[key]["map50"] <= 1.0
    assert summary["settings"]["calib_method"] == "percentile"  # from the config file
    assert summary["settings"]["num_calib"] == 8                 # command line wins over the config file
    assert summary["data"]["calib_images"] == 8 and summary["data"]["eval_images"] == 8
    assert [r[0] for r in summary["quantization"]["ignored"]] == ["model.24.m.2"]
    assert len(summary["quantization"]["replaced"]) == 59
    assert "mAP50-95" in proc.stdout and (out / "report.md").read_text().startswith("# PTQ report")
    assert set(summary["versions"]) >= {"torch", "qdqtorch", "onnxruntime"}


def test_onnx_is_clean_qdq_and_runtime_agrees(ptq_run):
    out, _ = ptq_run
    model = onnx.load(str(out / "model.qdq.onnx"))
    onnx.checker.check_model(model)
    producer = {out: node.op_type for node in model.graph.node for out in node.output}
    convs = [n for n in model.graph.node if n.op_type == "Conv"]
    quantized = [n for n in convs if producer.get(n.input[0]) == producer.get(n.input[1]) == "DequantizeLinear"]
    assert len(convs) == 60 and len(quantized) == 59
    assert "model.24/m.2" in next(n.name for n in convs if n not in quantized)
    assert len(check_qdq(model).errors) == 2  # the float layer, without allow_float
    assert check_qdq(model, allow_float=["*model.24/m.2/*"]).errors == []
    summary = json.loads((out / "summary.json").read_text())
    assert abs(summary["int8_onnxruntime"]["map50_95"] - summary["int8"]["map50_95"]) < 0.03
    calib = json.loads((out / "calibration.json").read_text())
    assert calib["format"] == "qdqtorch.calibration" and len(calib["quantizers"]) == 118


def test_bad_input_gives_one_line_error_and_nonzero_exit(tmp_path, coco128_dir):
    proc = run_script("--model", tmp_path / "missing.pt", "--data", coco128_dir / "coco128.yaml",
                      "--out", tmp_path / "o")
    assert proc.returncode == 2
    assert proc.stderr.startswith("error:") and "missing.pt" in proc.stderr
    proc = run_script("--model", "x.pt", "--calib-method", "kl")
    assert proc.returncode == 2 and "invalid choice" in proc.stderr
