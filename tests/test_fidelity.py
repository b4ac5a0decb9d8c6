"""Fidelity (the float model's own detections as ground truth): float scores exactly 1 against itself, on the embedded
demo and on the real YOLOv5n; per-output SNR/cosine equal the float64 formula; unlabelled image folders; empty
references; ONNX Runtime candidates."""
import math
import shutil

import numpy as np
import pytest
import torch
from torch import nn

from conftest import REPO_ROOT, YOLOV5_REPO_FIXTURE
from qdqtorch.data import Preprocess
from qdqtorch.eval import EvalSet, class_mismatch, evaluate, fidelity, float_reference, output_errors
from qdqtorch.eval.fidelity import candidate_tap, reference_from, reference_tap, score_tap

DEMO = REPO_ROOT / "assets" / "demo"


@pytest.fixture(scope="module")
def demo():
    from qdqtorch.models import load_model
    loaded = load_model(DEMO / "shapes_detector.safetensors")
    es = EvalSet.from_yaml(DEMO / "shapes.yaml", "val", Preprocess.yolo(256), num_images=12, progress=False)
    return loaded, es


@pytest.fixture(scope="module")
def yolov5n_few(yolov5n_path, coco128_dir):
    from qdqtorch.models import load_model
    loaded = load_model(yolov5n_path, repo=YOLOV5_REPO_FIXTURE)
    es = EvalSet.from_yaml(coco128_dir / "coco128.yaml", "val", Preprocess.yolo(320), num_images=6, progress=False)
    return loaded, es


class _Scaled(nn.Module):
    """The float model with every output tensor multiplied by `factor` (boxes, scores and raw maps alike)."""

    def __init__(self, model: nn.Module, factor: float = 1.0, drop: bool = False):
        super().__init__()
        self.model, self.factor, self.drop = model, factor, drop

    def forward(self, x):
        def scale(o):
            if isinstance(o, torch.Tensor):
                return o * self.factor
            if isinstance(o, dict):
                return {k: scale(v) for k, v in o.items()}
            return type(o)(scale(v) for v in o)
        out = scale(self.model(x))
        if self.drop:                        # every score to zero: nothing is detected
            pred = out[0] if isinstance(out, (tuple, list)) else out
            pred[..., 4:] = 0
        return out


def _assert_self_fidelity_is_one(loaded, es):
    ref = float_reference(loaded.model, es, layout=loaded.layout, batch_size=5, names=loaded.names)
    assert ref.num_boxes > 0 and ref.num_classes == len(loaded.names)
    for scorer in ("fast", "pycocotools"):
        res = fidelity(loaded.model, ref, batch_size=5, scorer=scorer)
        assert res.map50_95 == pytest.approx(1.0, abs=1e-12) and res.map50 == pytest.approx(1.0, abs=1e-12)
    assert res.num_detections > ref.num_boxes
    assert all(o.snr_db == math.inf and o.cosine == pytest.approx(1.0) for o in res.outputs)
    return ref, res


def test_float_against_itself_is_one_on_the_demo(demo):
    loaded, es = demo
    ref, _ = _assert_self_fidelity_is_one(loaded, es)
    assert ref.layout == "ultralytics" and ref.settings["reference_conf"] == 0.25


def test_float_against_itself_is_one_on_yolov5n(yolov5n_few):
    loaded, es = yolov5n_few
    ref, res = _assert_self_fidelity_is_one(loaded, es)
    assert ref.layout == "yolov5" and len(ref.outputs) == 4      # prediction + three raw head maps
    # the candidate's low-confidence boxes include classes without any pseudo ground truth: ignored, no crash
    gt_classes = {a["category_id"] for a in ref.eval_set.gt["annotations"]}
    assert len(set(res.detections.category_id.tolist()) - gt_classes) > 10


def test_fidelity_drops_when_detections_change(demo):
    loaded, es = demo
    ref = float_reference(loaded.model, es, layout=loaded.layout)
    # boxes 3 % larger: every box still matches at IoU 0.5 (AP50 = 1), not at the strict thresholds
    res = fidelity(_ScaledBoxes(loaded.model, 1.03).eval(), ref)
    assert res.map50 == pytest.approx(1.0, abs=1e-12) and 0.2 < res.map50_95 < 0.95
    nothing = fidelity(_Scaled(loaded.model, drop=True).eval(), ref, outputs=False)
    assert nothing.map50_95 == 0.0 and nothing.num_detections == 0 and nothing.outputs == []


class _ScaledBoxes(nn.Module):
    """Ultralytics-layout predictions with box widths and heights scaled (centres unchanged)."""

    def __init__(self, model: nn.Module, factor: float):
        super().__init__()
        self.model, self.factor = model, factor

    def forward(self, x):
        pred = self.model(x)
        pred = pred[0] if isinstance(pred, (tuple, list)) else pred
        pred = pred.clone()
        pred[:, 2:4] *= self.factor
        return pred


def test_one_pass_gives_coco_map_and_fidelity(demo):
    """The taps passed to `evaluate` give the same reference and fidelity as separate passes, and the same mAP."""
    loaded, es = demo
    candidate = _ScaledBoxes(loaded.model, 1.03).eval()
    tap = reference_tap(loaded.layout)
    float_map = evaluate(loaded.model, es, layout=loaded.layout, scorer="fast", select=tap, progress=False)
    ref = reference_from(tap, es)
    alone = float_reference(loaded.model, es, layout=loaded.layout)
    assert ref.eval_set.gt == alone.eval_set.gt and ref.num_boxes > 0
    assert float_map.map50_95 == evaluate(loaded.model, es, layout=loaded.layout, scorer="fast",
                                          progress=False).map50_95
    tap = candidate_tap(ref)
    cand_map = evaluate(candidate, es, layout=loaded.layout, scorer="fast", select=tap, progress=False)
    both = score_tap(tap, ref)
    separate = fidelity(candidate, alone)
    assert (both.map50_95, both.map50) == (separate.map50_95, separate.map50) and both.map50_95 < 0.95
    assert cand_map.map50_95 < float_map.map50_95
    assert both.outputs[0].snr_db == pytest.approx(separate.outputs[0].snr_db)


def test_output_snr_and_cosine_match_the_float64_formula(demo):
    loaded, es = demo
    ref = float_reference(loaded.model, es, layout=loaded.layout, output_images=7, batch_size=4)
    assert ref.settings["output_images"] == 7
    torch.manual_seed(0)
    res = fidelity(_Scaled(loaded.model, 0.97).eval(), ref, batch_size=3)
    # independent: the first 7 images' float outputs, straight from the model, and the formula in numpy float64
    with torch.no_grad():
        x = torch.cat([b for _, b in es.batches(4)])[:7]
        out = loaded.model(x)
    leaves = [out] if isinstance(out, torch.Tensor) else [t for t in out if isinstance(t, torch.Tensor)]
    r = leaves[0].double().numpy()
    c = (leaves[0] * 0.97).double().numpy()
    snr = 10 * np.log10(np.sum(r ** 2) / np.sum((r - c) ** 2))
    cos = np.sum(r * c) / np.sqrt(np.sum(r ** 2) * np.sum(c ** 2))
    assert res.outputs[0].num_images == 7
    assert res.outputs[0].snr_db == pytest.approx(snr, rel=1e-9) and res.outputs[0].cosine == pytest.approx(cos)
    assert snr == pytest.approx(-20 * np.log10(0.03), abs=0.05)     # 3 % error everywhere: ~30.5 dB
    direct = output_errors([torch.from_numpy(r)], [torch.from_numpy(c)])[0]
    assert direct.snr_db == pytest.approx(snr, rel=1e-12) and direct.cosine == pytest.approx(cos, rel=1e-12)


def test_float_reference_detecting_nothing_is_an_error(demo):
    loaded, es = demo
    with pytest.raises(ValueError, match="detects nothing.*--allow-empty"):
        float_reference(_Scaled(loaded.model, drop=True).eval(), es, layout=loaded.layout)
    ref = float_reference(_Scaled(loaded.model, drop=True).eval(), es, layout=loaded.layout, allow_empty=True)
    assert ref.num_boxes == 0
    assert fidelity(loaded.model, ref).map50_95 == -1.0      # COCO's "undefined": no ground truth at all


def test_unlabelled_image_folder_and_a_blank_image(demo, tmp_path):
    """An image folder without labels is a valid fidelity set; an image where float detects nothing counts only
    towards the candidate's false positives."""
    loaded, _ = demo
    images = tmp_path / "pics"
    images.mkdir()
    for p in sorted((DEMO / "images" / "val").glob("*.jpg"))[:6]:
        shutil.copy(p, images / p.name)
    import cv2
    cv2.imwrite(str(images / "zz_blank.jpg"), np.full((200, 300, 3), 127, np.uint8))
    es = EvalSet.from_source(images, Preprocess.yolo(256), progress=False)
    assert not es.labelled and len(es) == 7 and es.num_annotations == 0
    with pytest.raises(ValueError, match="no labels.*fidelity"):
        es.scorer("fast")
    ref = float_reference(loaded.model, es, layout=loaded.layout)
    assert ref.images_with_boxes == 6
    assert fidelity(loaded.model, ref).map50_95 == pytest.approx(1.0, abs=1e-12)
    # labelled folders still load their labels
    assert EvalSet.from_source(DEMO / "shapes.yaml", Preprocess.yolo(256), num_images=3, progress=False).labelled


def test_onnxruntime_candidate(demo, tmp_path):
    """The float model exported and run in ONNX Runtime agrees with itself in torch (float rounding only)."""
    pytest.importorskip("onnxruntime")
    from qdqtorch.export import export_onnx
    from qdqtorch.export.runtime import OnnxRuntimeModule
    from qdqtorch.models import PredictionOnly
    loaded, es = demo
    sample = next(es.batches(1))[1]
    path = export_onnx(PredictionOnly(loaded.model, loaded.layout), sample, tmp_path / "float.onnx")
    ref = float_reference(loaded.model, es, layout=loaded.layout, batch_size=1)
    res = fidelity(OnnxRuntimeModule(path), ref, batch_size=1)
    assert res.map50_95 > 0.98 and len(res.outputs) == 1 and res.outputs[0].snr_db > 60


def test_class_mismatch_names_both_sets():
    coco = ["person", "bicycle", "car"] + [f"c{i}" for i in range(77)]
    msg = class_mismatch(["helmet", "head"], coco, data="coco128.yaml")
    assert "helmet" in msg and "person" in msg and "2 classes" in msg and "80 classes" in msg and "\n" not in msg
    assert "count" in msg
    assert "names" in class_mismatch(["a", "b"], ["a", "c"])
    assert class_mismatch(["Person", "car"], ["person", "car"]) is None
    assert class_mismatch(["0", "1", "2"], ["x", "y", "z"]) is None          # unnamed model classes: count only
