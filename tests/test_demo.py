"""The embedded demo (assets/demo) and the first-run experience of scripts/ptq.py, with nothing beside the checkout:
`scripts/ptq.py --out DIR` alone quantizes, calibrates, scores float vs INT8, exports and runs the Q/DQ ONNX."""
import json
import shutil
import subprocess
import sys

import pytest

from conftest import REPO_ROOT

SCRIPT = str(REPO_ROOT / "scripts" / "ptq.py")
DEMO = REPO_ROOT / "assets" / "demo"


def run_script(*args, cwd=None):
    return subprocess.run([sys.executable, SCRIPT, *map(str, args)], capture_output=True, text=True, timeout=600,
                          cwd=cwd)


def one_error_line(proc) -> str:
    """The script failed with exit 2 and said why in one `error:` line, without a traceback."""
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-2000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, proc.stderr[-2000:]
    return errors[0]


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    proc = run_script("--out", out, cwd=tmp_path_factory.mktemp("elsewhere"))  # no other flag, any working folder
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out, json.loads((out / "summary.json").read_text()), proc


def test_demo_ships_in_the_repository_and_is_small():
    for split in ("train", "val"):
        images = sorted((DEMO / "images" / split).glob("*.jpg"))
        assert len(images) == 32
        assert all((DEMO / "labels" / split / f"{p.stem}.txt").is_file() for p in images)
    size = sum(p.stat().st_size for p in DEMO.rglob("*") if p.is_file())
    assert size < 4e6, f"assets/demo is {size / 1e6:.1f} MB"


def test_demo_runs_the_whole_main_job(demo_run):
    out, summary, proc = demo_run
    assert "embedded demo" in proc.stderr
    assert "demo" in summary["note"] and "32 calibration + 32 val images" in summary["note"]
    assert summary["data"]["eval_images"] == 32 and summary["data"]["calib_images"] == 32
    assert summary["settings"]["rules"] == "tensorrt" and summary["quantization"]["replaced"]
    rules = summary["quantization"]["rules"]  # the placement step's report sits beside the quantize_model report
    assert set(rules) == {"groups", "residual_adds", "disabled", "skipped", "float_ops", "stats"} and rules["groups"]
    # the demo sets no imgsz: the detector records the 256 px it was trained at (640 would score far lower)
    assert summary["settings"]["imgsz"] == 256 and summary["defaults"]["imgsz"] == "recorded in the checkpoint"
    assert "imgsz 256 (recorded in the checkpoint)" in proc.stdout
    # a detector that detects: well above chance on its own val images, and INT8 close to it
    assert summary["float"]["map50_95"] > 0.5
    assert summary["int8"]["map50_95"] > summary["float"]["map50_95"] - 0.03
    assert abs(summary["int8_onnxruntime"]["map50_95"] - summary["int8"]["map50_95"]) < 0.03
    # labelled and the model's classes: COCO mAP and fidelity side by side, fidelity close to 1 for both INT8 models
    assert summary["data"]["score"].startswith("COCO mAP") and set(summary["fidelity"]) == {"int8", "int8_onnxruntime"}
    fid = summary["fidelity"]
    assert 0.95 < fid["int8"]["map50_95"] <= 1
    assert abs(fid["int8_onnxruntime"]["map50_95"] - fid["int8"]["map50_95"]) < 0.01
    assert "fidelity mAP50-95" in proc.stdout and "whole-network error" in proc.stdout
    assert not summary["qdq_check"]["errors"]
    assert (out / "model.qdq.onnx").stat().st_size > 0 and (out / "calibration.json").is_file()


def test_summary_and_report_explain_their_fields(demo_run):
    out, summary, _ = demo_run
    assert set(summary["fields"]) == set(summary), "every top-level key of summary.json is explained"
    report = (out / "report.md").read_text()
    assert summary["note"] in report and "mAP50-95 is COCO's mean average precision" in report
    assert all(f"- `{key}`: " in report for key in summary["fields"])


def test_wrong_model_path_is_one_line(tmp_path):
    line = one_error_line(run_script("--model", tmp_path / "nothere.safetensors", "--data", DEMO / "shapes.yaml",
                                     "--out", tmp_path / "o"))
    assert "nothere.safetensors" in line and "pass" in line


def test_folder_without_images_is_one_line(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    line = one_error_line(run_script("--model", DEMO / "shapes_detector.safetensors", "--data", empty,
                                     "--out", tmp_path / "o"))
    assert str(empty) in line and "no" in line


def test_unknown_config_key_is_one_line(tmp_path):
    config = tmp_path / "settings.yaml"
    config.write_text("calib_methd: mse\n")
    line = one_error_line(run_script("--config", config, "--out", tmp_path / "o"))
    assert str(config) in line and "calib_methd" in line and "calib_method" in line


def test_corrupt_image_is_skipped_with_one_warning_naming_it(tmp_path):
    data = tmp_path / "demo"
    shutil.copytree(DEMO, data, ignore=shutil.ignore_patterns("*.safetensors", "build.py"))
    (data / "images" / "val" / "0003.jpg").write_bytes(b"not a jpeg")
    proc = run_script("--model", DEMO / "shapes_detector.safetensors", "--data", data / "shapes.yaml",
                      "--num-calib", 8, "--imgsz", 128, "--no-export", "--skip-float-eval", "--out", tmp_path / "o")
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    warned = [line for line in proc.stderr.splitlines() if line.startswith("warning: skipped 1 of 32")]
    assert len(warned) == 1, proc.stderr[-2000:]
    assert "0003.jpg" in proc.stderr and "fix or remove" in proc.stderr
    assert json.loads((tmp_path / "o" / "summary.json").read_text())["data"]["eval_images"] == 31


def test_safetensors_detector_round_trips_and_bad_files_say_why(tmp_path):
    """save_detector writes what load_model reads back (same outputs); files without a model say what is missing."""
    import torch
    from safetensors.torch import save_file

    from qdqtorch.models import ModelLoadError, load_model, save_detector
    from qdqtorch.models.safetensors_loader import ARCHITECTURE_KEY, read_metadata
    demo = load_model(DEMO / "shapes_detector.safetensors")
    assert demo.names == ["circle", "square", "triangle"] and demo.layout == "ultralytics"
    path = save_detector(demo.model, tmp_path / "copy.safetensors", read_metadata(
        DEMO / "shapes_detector.safetensors")[ARCHITECTURE_KEY], demo.names)
    again = load_model(path)
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(again.model(x)[0], demo.model(x)[0])  # float16 storage: the same values both times
    save_file({"w": torch.zeros(2)}, str(tmp_path / "tensors.safetensors"))
    with pytest.raises(ModelLoadError, match="tensors.safetensors.*no model to build"):
        load_model(tmp_path / "tensors.safetensors")
    (tmp_path / "junk.safetensors").write_bytes(b"junk")
    with pytest.raises(ModelLoadError, match="junk.safetensors: not a readable safetensors file"):
        load_model(tmp_path / "junk.safetensors")


def _demo_copy(tmp_path):
    """The demo dataset in a temporary folder: Ultralytics writes a labels cache beside the labels."""
    data = tmp_path / "demo"
    shutil.copytree(DEMO, data, ignore=shutil.ignore_patterns("*.safetensors", "build.py", "train"))
    return data


def _iou(a, b):
    """IoU of two xyxy boxes (plain arithmetic, the reference for the matching below)."""
    w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = w * h
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


def test_ultralytics_predicts_with_the_export_on_a_non_square_image(demo_run):
    """YOLO("model.qdq.onnx").predict on one 256x160 image: Ultralytics letterboxes it (padding only, no scaling) to
    the graph's fixed 256x256 from the export's metadata, and the boxes land on the ground truth in the image's own
    pixels (every labelled shape lies inside the crop)."""
    import numpy as np
    from PIL import Image
    from ultralytics import YOLO
    out, summary, _ = demo_run
    assert summary["onnx_graph"]["shape"] == "static"
    narrow = np.asarray(Image.open(DEMO / "images" / "val" / "0001.jpg").convert("RGB"))[:, :160]
    result = YOLO(str(out / "model.qdq.onnx"), task="detect").predict(narrow[..., ::-1].copy(), verbose=False)[0]
    assert result.orig_shape == (256, 160) and result.names == {0: "circle", 1: "square", 2: "triangle"}
    truth = []
    for line in (DEMO / "labels" / "val" / "0001.txt").read_text().split("\n"):
        if line.strip():
            c, x, y, w, h = map(float, line.split())
            box = [(x - w / 2) * 256, (y - h / 2) * 256, (x + w / 2) * 256, (y + h / 2) * 256]
            if box[2] <= 160:
                truth.append((int(c), box))
            else:
                assert box[0] >= 160, "the crop cuts no shape"
    kept = result.boxes.conf > 0.25
    boxes, classes = result.boxes.xyxy[kept].tolist(), result.boxes.cls[kept].int().tolist()
    found = [any(k == c and _iou(b, t) > 0.7 for b, k in zip(boxes, classes)) for c, t in truth]
    assert len(truth) == 4 and all(found), (truth, boxes, classes)


def test_ultralytics_val_of_the_export_matches_our_onnxruntime_score(demo_run, tmp_path):
    """YOLO("model.qdq.onnx").val(data=...) with default arguments scores what our ONNX Runtime evaluation does.

    Both run the same graph on the same 32 images at the same 256x256 letterbox (the images are 256 px, so no
    resize); they differ in NMS IoU (0.7 vs our 0.65), JPEG decoder (OpenCV vs PIL) and AP code (Ultralytics' vs
    pycocotools). Measured on this demo (2-core CPU): float ONNX 0.9157 vs 0.9151 mAP50-95, INT8 0.9051 vs 0.9046;
    mAP50 0.992 vs 0.997. The tolerances are ~5x the mAP50-95 difference and ~2x the mAP50 one; a graph run at the
    wrong size or in the wrong colour order falls far outside them.
    """
    from ultralytics import YOLO
    out, summary, _ = demo_run
    data = _demo_copy(tmp_path)
    metrics = YOLO(str(out / "model.qdq.onnx"), task="detect").val(data=str(data / "shapes.yaml"), plots=False,
                                                                   verbose=False, project=str(tmp_path / "runs"))
    ours = summary["int8_onnxruntime"]
    assert abs(metrics.box.map - ours["map50_95"]) < 0.005, (metrics.box.map, ours["map50_95"])
    assert abs(metrics.box.map50 - ours["map50"]) < 0.01, (metrics.box.map50, ours["map50"])


def test_shifted_grid_on_the_yolov8_style_demo_exports_zero_point_free_and_runtime_agrees(demo_run, tmp_path):
    """--grid shifted through the whole job on a C2f/SPPF detector (Split, Concat, MaxPool, Resize carry the shift)."""
    import onnx
    from onnx import numpy_helper

    from qdqtorch.export import check_qdq

    _, symmetric, _ = demo_run
    proc = run_script("--out", tmp_path, "--grid", "shifted", "--ort-eval", "--check")
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["settings"]["grid"] == "shifted"
    calib = json.loads((tmp_path / "calibration.json").read_text())["quantizers"]
    shifted = [name for name, entry in calib.items() if entry["zero_point"]]
    assert len(shifted) > len(calib) // 4      # the image and the SiLU outputs
    proto = onnx.load(str(tmp_path / "model.qdq.onnx"))
    inits = {t.name: numpy_helper.to_array(t) for t in proto.graph.initializer}
    zero_points = [inits[n.input[2]] for n in proto.graph.node
                   if n.op_type in ("QuantizeLinear", "DequantizeLinear") and len(n.input) > 2 and n.input[2] in inits]
    assert zero_points and not any(z.any() for z in zero_points)  # what TensorRT accepts
    assert summary["qdq_check"]["errors"] == []   # the pipeline's check (the DFL conv is float by design)
    assert {f.node for f in check_qdq(proto).errors} <= {"/model/model.14/dfl/conv/Conv"}
    # the folded graph in ONNX Runtime scores what fake quant does, and the demo stays as good as symmetric
    assert abs(summary["int8_onnxruntime"]["map50_95"] - summary["int8"]["map50_95"]) < 0.01
    assert summary["int8"]["map50_95"] > symmetric["int8"]["map50_95"] - 0.02
