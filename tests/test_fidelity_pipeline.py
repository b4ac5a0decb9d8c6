"""Fidelity wired into the PTQ run and the sweep, labels optional, and the checks that keep a run from reporting
nonsense silently: each is a `warning:` or an `error:` naming what to check."""
from __future__ import annotations

import importlib.util
import json
import shutil
import subprocess
import sys
import warnings

import pytest
import torch
from PIL import Image
from torch import nn

from conftest import REPO_ROOT, YOLOV5_REPO_FIXTURE
from qdqtorch.ptq import PTQSettings, calibrate, prepare, table
from qdqtorch.sensitivity.fidelity_metric import sweep_metric_name
from test_sensitivity_toy import one_thread  # noqa: F401

PTQ = str(REPO_ROOT / "scripts" / "ptq.py")
SENSITIVITY = REPO_ROOT / "scripts" / "sensitivity.py"
DEMO = REPO_ROOT / "assets" / "demo"
DEMO_MODEL = DEMO / "shapes_detector.safetensors"


def run_ptq_script(*args):
    return subprocess.run([sys.executable, PTQ, *map(str, args)], capture_output=True, text=True, timeout=600)


def warning_lines(stderr: str, text: str) -> list:
    return [line for line in stderr.splitlines() if line.startswith("warning:") and text in line]


@pytest.fixture(scope="module")
def unlabelled(tmp_path_factory):
    """16 demo val images copied without their labels."""
    folder = tmp_path_factory.mktemp("unlabelled") / "images"
    folder.mkdir()
    for path in sorted((DEMO / "images" / "val").glob("*.jpg"))[:16]:
        shutil.copy(path, folder / path.name)
    return folder


# ---- scripts/ptq.py end to end ------------------------------------------------------------------------------------
def test_custom_classes_on_coco_warn_and_are_scored_by_fidelity(ppe_yolov5n_path, coco128_dir, tmp_path):
    """A 2-class fine-tune with the COCO yaml: one warning naming both sets of classes, no mAP rows, fidelity for
    fake quant and ONNX Runtime with the per-output error."""
    out = tmp_path / "ppe"
    proc = run_ptq_script("--model", ppe_yolov5n_path, "--repo", YOLOV5_REPO_FIXTURE, "--data",
                          coco128_dir / "coco128.yaml", "--num-calib", 8, "--num-eval", 16, "--imgsz", 256,
                          "--batch", 8, "--ort-eval", "--out", out)
    assert proc.returncode == 0, proc.stderr[-3000:]
    mismatch = warning_lines(proc.stderr, "are not the 80 classes")
    assert len(mismatch) == 1 and "helmet" in mismatch[0] and "person" in mismatch[0], proc.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert not {"float", "int8", "int8_onnxruntime"} & set(summary), "no mAP against labels of other classes"
    assert summary["data"]["score"].startswith("fidelity") and summary["model"]["names"] == ["helmet", "vest"]
    fid = summary["fidelity"]
    assert set(fid) == {"int8", "int8_onnxruntime"}
    boxes = summary["data"]["fidelity_reference"]["num_boxes"]
    few = warning_lines(proc.stderr, "reference boxes")   # helmets and vests are rare in 16 COCO images
    noun = "box" if boxes == 1 else "boxes"
    assert 0 < boxes < 100 and len(few) == 1 and f"only {boxes} {noun} on" in few[0], proc.stderr[-3000:]
    for key in fid:
        assert 0 <= fid[key]["map50_95"] <= fid[key]["map50"] <= 1 and fid[key]["num_reference_boxes"] == boxes
        assert fid[key]["outputs"][0]["shape"] == [3 * (32 * 32 + 16 * 16 + 8 * 8), 7]  # 2 classes: 5 + 2
        assert 20 < fid[key]["outputs"][0]["snr_db"] < 80 and 0.99 < fid[key]["outputs"][0]["cosine"] <= 1
    assert len(fid["int8"]["outputs"]) == 4  # prediction + the three raw head maps of the PyTorch model
    assert set(summary["fields"]) == set(summary)
    assert "fidelity mAP50-95" in proc.stdout and "Δ mAP50-95" not in proc.stdout
    assert "whole-network error of INT8 fake quant" in proc.stdout and "SNR" in proc.stdout
    report = (out / "report.md").read_text()
    assert "fidelity mAP50-95" in report and "- `fidelity`: " in report and "helmet" in report


def test_demo_on_an_unlabelled_folder_is_scored_by_fidelity(unlabelled, tmp_path):
    """Images without labels: fidelity is the score; the default calibration source is the same folder, which is
    flagged."""
    out = tmp_path / "o"
    proc = run_ptq_script("--model", DEMO_MODEL, "--data", unlabelled, "--imgsz", 128, "--num-calib", 8,
                          "--ort-eval", "--out", out)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert len(warning_lines(proc.stderr, "calibration images are evaluation images")) == 1, proc.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["data"]["labelled"] is False and summary["data"]["eval_boxes"] is None
    assert not {"float", "int8", "int8_onnxruntime"} & set(summary)
    assert summary["data"]["fidelity_reference"]["num_boxes"] >= 16     # every demo image holds shapes
    # the demo detector keeps almost all of its own detections as INT8, in PyTorch and in ONNX Runtime alike
    assert 0.8 < summary["fidelity"]["int8"]["map50_95"] <= 1
    assert abs(summary["fidelity"]["int8_onnxruntime"]["map50_95"] - summary["fidelity"]["int8"]["map50_95"]) < 0.03
    assert any("calibration images are evaluation images" in w for w in summary["warnings"])
    assert "fidelity mAP50-95" in proc.stdout and "no labels" in proc.stdout


def test_a_float_model_that_detects_nothing_is_an_error_unless_allowed(tmp_path):
    blank = tmp_path / "blank"
    blank.mkdir()
    for i in range(4):
        Image.new("RGB", (96, 96), (90, 90, 90)).save(blank / f"{i}.jpg")
    args = ["--model", DEMO_MODEL, "--data", blank, "--imgsz", 64, "--num-calib", 4, "--no-export",
            "--calib-data", DEMO / "images" / "train", "--out", tmp_path / "o"]
    proc = run_ptq_script(*args)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "detects nothing" in errors[0] and "--allow-empty" in errors[0]
    assert "0.jpg" in errors[0]
    proc = run_ptq_script(*args, "--allow-empty", "--jitter-draws", 2)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert warning_lines(proc.stderr, "detects nothing")
    assert warning_lines(proc.stderr, "jitter_draws: nothing to rescore")   # a warning, not an error after the work
    summary = json.loads((tmp_path / "o" / "summary.json").read_text())
    assert "fidelity" not in summary and "jitter" not in summary


# ---- the checks, through the stages ---------------------------------------------------------------------------
def _demo_settings(data, **kw) -> PTQSettings:
    return PTQSettings(model=str(DEMO_MODEL), data=str(data), imgsz=64, batch=8, num_eval=8,
                       calib_data=str(DEMO / "images" / "train"), **kw)


def test_calibration_inputs_out_of_range_and_dead_ranges_are_warned(unlabelled):
    prep = prepare(_demo_settings(unlabelled), progress=False, log=lambda *_: None)
    with pytest.warns(UserWarning) as record:
        calibrate(prep, [torch.rand(2, 3, 64, 64) * 255], progress=False)
    texts = [str(w.message) for w in record]
    assert any("did you pass 0..255 data?" in t and "0..1" in t for t in texts), texts
    prep = prepare(_demo_settings(unlabelled), progress=False, log=lambda *_: None)
    with pytest.warns(UserWarning) as record:
        calibrate(prep, [torch.zeros(2, 3, 64, 64)], progress=False)
    texts = [str(w.message) for w in record]
    assert any("all-zero" in t for t in texts), texts
    # a zero image through the first conv: a constant (bias) map, and after it ranges of 0 -> named quantizers
    dead = [t for t in texts if "calibrated activation range (amax) is 0" in t]
    assert dead and all(t.split(":")[0].endswith("input_quantizer") for t in dead), texts
    assert all(t in prep.summary["warnings"] for t in dead)


def test_too_few_reference_boxes_for_a_fine_figure_are_warned(yolov5n_path, coco128_dir):
    """Under 100 float detections one figure moves by hundredths with the last bit of the biases (BENCHMARKS §8l)."""
    def boxes_and_warnings(num_eval: int) -> tuple:
        settings = PTQSettings(model=str(yolov5n_path), repo=str(YOLOV5_REPO_FIXTURE), imgsz=320, batch=8,
                               data=str(coco128_dir / "coco128.yaml"), num_eval=num_eval)
        with warnings.catch_warnings(record=True) as record:
            warnings.simplefilter("always")
            prep = prepare(settings, progress=False, log=lambda *_: None)
        return prep.reference.num_boxes, [str(w.message) for w in record if "reference boxes" in str(w.message)]

    boxes, few = boxes_and_warnings(8)
    assert 10 <= boxes < 100 and len(few) == 1 and f"only {boxes} boxes on" in few[0] and "§8l" in few[0], few
    boxes, few = boxes_and_warnings(40)
    assert boxes >= 100 and not few, few


def test_a_model_with_random_weights_is_warned_and_noted_in_the_table(unlabelled):
    pytest.importorskip("ultralytics")
    settings = PTQSettings(model="yolov8n.yaml", data=str(unlabelled), imgsz=64, batch=8, num_eval=4,
                           allow_empty=True)
    with pytest.warns(UserWarning, match="random weights"):
        prep = prepare(settings, progress=False, log=lambda *_: None)
    assert prep.summary["model"]["trained"] is False
    assert "random weights" in table(prep.summary)


def test_the_sweep_metric_falls_back_to_fidelity_without_meaningful_labels():
    assert sweep_metric_name("map50_95", labelled=True, mismatch=None) == "map50_95"
    assert sweep_metric_name("fidelity", labelled=True, mismatch=None) == "fidelity"
    assert sweep_metric_name("pkg.mod:fn", labelled=False, mismatch=None) == "pkg.mod:fn"
    with pytest.warns(UserWarning, match="no labels.*--metric fidelity"):
        assert sweep_metric_name("map50_95", labelled=False, mismatch=None) == "fidelity"
    with pytest.warns(UserWarning, match="classes are not the dataset's.*fidelity_map50"):
        assert sweep_metric_name("map50", labelled=True, mismatch="2 vs 80 classes") == "fidelity_map50"


# ---- sweeps on fidelity -------------------------------------------------------------------------------------------
class HarmlessDetector(nn.Module):
    """YOLOv5-layout detector: 16 fixed boxes whose scores come from the image's brightness per cell (float path);
    the two convs (the only quantized layers) reach the scores at 1e-6 only, so quantizing them cannot matter."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.a = nn.Conv2d(3, 4, 3, padding=1)
        self.b = nn.Conv2d(4, 4, 1)
        centres = torch.arange(8, 64, 16, dtype=torch.float32)
        cy, cx = torch.meshgrid(centres, centres, indexing="ij")
        self.register_buffer("boxes", torch.stack([cx.flatten(), cy.flatten(), torch.full((16,), 12.0),
                                                   torch.full((16,), 12.0)], 1))

    def forward(self, x):
        side = self.b(torch.relu(self.a(x))).mean((1, 2, 3))
        cells = nn.functional.avg_pool2d(x.mean(1, keepdim=True), 16).flatten(1)        # (B, 16)
        obj = torch.sigmoid(12 * (cells - cells.mean(1, keepdim=True)) + 1e-6 * side[:, None])
        cls = torch.stack([torch.sigmoid(8 * (cells - 0.5)), torch.sigmoid(8 * (0.5 - cells))], -1)
        return torch.cat([self.boxes.expand(x.shape[0], 16, 4), obj[..., None], cls], -1)


def test_a_fidelity_sweep_where_no_layer_can_matter_recommends_nothing(unlabelled, tmp_path, one_thread):  # noqa: F811
    import qdqtorch
    from qdqtorch.eval import EvalSet
    from qdqtorch.sensitivity import SweepSettings, run_sensitivity
    from qdqtorch.sensitivity.fidelity_metric import FidelityMetric
    from qdqtorch.sensitivity.noise import NO_SIGNIFICANT
    eval_set = EvalSet.from_images(unlabelled, {"imgsz": 64}, progress=False)
    model = HarmlessDetector().eval()
    qdqtorch.quantize_model(model)
    qdqtorch.calibrate(model, [x for _, x in eval_set.batches(8)], method="max", progress=False)
    metric = FidelityMetric.from_model(model, eval_set, "yolov5")
    assert metric.reference.num_boxes >= 16
    result = run_sensitivity(model, metric, tmp_path, SweepSettings(chart=False), progress=False,
                             base_config={"kind": "quant", "data": {}})
    assert result["settings"]["metric"] == "fidelity_map50_95" and result["noise"] is not None
    assert [e["unit"] for e in result["entries"]] and not any(e["significant"] for e in result["entries"])
    rec = result["recommendation"]
    assert rec["units"] == [] and NO_SIGNIFICANT in rec["note"]


def test_sensitivity_script_sweeps_on_fidelity_and_prints_its_noise(unlabelled, tmp_path, capsys):
    spec = importlib.util.spec_from_file_location("sensitivity_script", SENSITIVITY)
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    out = tmp_path / "sweep"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        code = script.main(["--model", str(DEMO_MODEL), "--data", str(unlabelled), "--num-images", "8", "--imgsz",
                            "96", "--num-calib", "4", "--calib-data", str(DEMO / "images" / "train"), "--unit",
                            "block", "--proxy-images", "0", "--metric", "fidelity", "--quiet", "--no-chart",
                            "--out", str(out)])
    assert code == 0
    printed = capsys.readouterr().out
    result = json.loads((out / "sensitivity.json").read_text())
    assert result["settings"]["metric"] == "fidelity_map50_95" and result["data"]["metric"] == "fidelity_map50_95"
    assert result["settings"]["metric_requested"] == "fidelity"
    std = result["noise"]["std"]
    assert std > 0 and f"noise (bootstrap std over the images) {std:.4f}" in printed
    # the recommendation names only units whose impact exceeds that noise
    significant = [e["unit"] for e in result["entries"] if e["significant"]]
    assert all(e["significant"] == (e["impact"] > std) for e in result["entries"])
    assert result["recommendation"]["units"] == significant[:3]
