"""qdqtorch.eval: ids, ground truth, decoding + NMS, the fast scorer against pycocotools, evaluate end to end."""
from __future__ import annotations

import json

import cv2
import numpy as np
import pytest
import torch
import torchvision
import yaml
from torch import nn

from qdqtorch.data import Preprocess
from qdqtorch.eval import (COCO80_NAMES, COCO80_TO_91, Detections, EvalSet, FastCocoScorer, PycocotoolsScorer,
                           coco80_to_91, coco91_to_80, decode_predictions, detect, evaluate, non_max_suppression,
                           read_yolo_labels, yolo_to_coco)

from conftest import YOLOV5_REPO_FIXTURE


# ------------------------------------------------------------------------------------------------- ids
def test_coco80_to_91_mapping():
    assert len(COCO80_TO_91) == 80 and COCO80_TO_91 == sorted(set(COCO80_TO_91))
    assert COCO80_TO_91[:12] == [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 13] and COCO80_TO_91[-1] == 90
    missing = sorted(set(range(1, 91)) - set(COCO80_TO_91))
    assert missing == [12, 26, 29, 30, 45, 66, 68, 69, 71, 83]
    assert all(coco91_to_80(coco80_to_91(i)) == i for i in range(80))
    with pytest.raises(ValueError):
        coco91_to_80(12)


def test_coco_ids_agree_with_the_real_annotation_file(coco128_dir):
    cats = json.loads((coco128_dir / "annotations" / "instances_train2017.json").read_text())["categories"]
    cats = sorted(cats, key=lambda c: c["id"])
    assert [c["id"] for c in cats] == COCO80_TO_91
    assert [c["name"] for c in cats] == COCO80_NAMES
    names = yaml.safe_load((coco128_dir / "coco128.yaml").read_text())["names"]
    assert [names[i] for i in range(80)] == COCO80_NAMES


# ------------------------------------------------------------------------------------------------- ground truth
def test_yolo_labels_to_coco(tmp_path):
    img = tmp_path / "images" / "7.jpg"
    img.parent.mkdir()
    (tmp_path / "labels").mkdir()
    (tmp_path / "labels" / "7.txt").write_text("1 0.5 0.5 0.2 0.4\n\n0 0.1 0.2 0.3 0.2 0.3 0.4\n")
    gt = yolo_to_coco([img], [(100, 200)], ["a", "b"], [0, 1])
    assert gt["images"] == [{"id": 7, "file_name": "7.jpg", "height": 100, "width": 200}]
    a0, a1 = gt["annotations"]
    assert a0 == {"id": 1, "image_id": 7, "category_id": 1, "bbox": pytest.approx([80.0, 30.0, 40.0, 40.0]),
                  "area": pytest.approx(1600.0), "iscrowd": 0}
    # polygon row -> its bounding box: x 0.1..0.3, y 0.2..0.4
    assert a1["category_id"] == 0 and a1["bbox"] == pytest.approx([20.0, 20.0, 40.0, 20.0])
    assert gt["categories"] == [{"id": 0, "name": "a"}, {"id": 1, "name": "b"}]
    # COCO ids for the 80-class case
    gt91 = yolo_to_coco([img], [(100, 200)], COCO80_NAMES, COCO80_TO_91)
    assert [a["category_id"] for a in gt91["annotations"]] == [2, 1]
    (tmp_path / "labels" / "7.txt").write_text("5 0.5 0.5 0.2 0.4\n")
    with pytest.raises(ValueError, match="7.txt: class 5"):
        yolo_to_coco([img], [(100, 200)], ["a", "b"], [0, 1])


def test_yolo_labels_match_the_coco_json(coco128_dir):
    """labels/train2017 converted to COCO equal the original json's non-crowd boxes (to label rounding)."""
    gt_json = json.loads((coco128_dir / "annotations" / "instances_train2017.json").read_text())
    paths = sorted((coco128_dir / "images" / "train2017").glob("*.jpg"))[:10]
    sizes = {im["file_name"]: (im["height"], im["width"]) for im in gt_json["images"]}
    gt = yolo_to_coco(paths, [sizes[p.name] for p in paths], COCO80_NAMES, COCO80_TO_91)
    for im in gt["images"]:
        ours = sorted((a["category_id"], *np.round(a["bbox"], 0)) for a in gt["annotations"]
                      if a["image_id"] == im["id"])
        ref = sorted((a["category_id"], *np.round(a["bbox"], 0)) for a in gt_json["annotations"]
                     if a["image_id"] == im["id"] and not a["iscrowd"])
        assert len(ours) == len(ref)
        assert np.abs(np.array(ours) - np.array(ref)).max() <= 1.0


# ------------------------------------------------------------------------------------------------- decoding
def _yolov5_rows():
    # xywh, objectness, 3 class probabilities
    return torch.tensor([[[50.0, 40.0, 20.0, 10.0, 0.5, 0.9, 0.2, 0.001],
                          [10.0, 10.0, 4.0, 6.0, 0.1, 0.1, 0.3, 0.6]]])


def test_decode_yolov5_layout():
    boxes, scores = decode_predictions(_yolov5_rows(), "yolov5")
    assert boxes[0].tolist() == [[40.0, 35.0, 60.0, 45.0], [8.0, 7.0, 12.0, 13.0]]
    assert torch.allclose(scores[0], torch.tensor([[0.45, 0.1, 0.0005], [0.01, 0.03, 0.06]]))
    with pytest.raises(ValueError, match="ultralytics"):
        decode_predictions(torch.zeros(1, 85, 4), "yolov5", nc=200)


def test_decode_ultralytics_layout():
    rows = _yolov5_rows()
    ultra = torch.cat((rows[..., :4], rows[..., 5:]), dim=2).transpose(1, 2)     # (1, 4+3, 2), no objectness
    boxes, scores = decode_predictions(ultra, "ultralytics")
    assert boxes[0].tolist() == [[40.0, 35.0, 60.0, 45.0], [8.0, 7.0, 12.0, 13.0]]
    assert torch.equal(scores[0], torch.tensor([[0.9, 0.2, 0.001], [0.1, 0.3, 0.6]]))
    # same detections as the yolov5 layout with objectness 1
    as_v5 = torch.cat((rows[..., :4], torch.ones(1, 2, 1), rows[..., 5:]), dim=2)
    a = non_max_suppression(ultra, "ultralytics", conf_thres=0.05)[0]
    b = non_max_suppression(as_v5, "yolov5", conf_thres=0.05)[0]
    assert torch.equal(a, b) and a.shape == (5, 6)


def test_nms_by_hand():
    pred = torch.tensor([[
        # x    y   w   h  obj  c0   c1
        [50, 50, 20, 20, 1.0, 0.9, 0.0],      # kept
        [51, 50, 20, 20, 1.0, 0.8, 0.0],      # same class, IoU 0.9 with the first: suppressed
        [51, 50, 20, 20, 1.0, 0.0, 0.7],      # other class: kept (class-aware)
        [150, 50, 20, 20, 0.5, 0.6, 0.5],     # multi-label: 0.3 for class 0 and 0.25 for class 1
        [150, 150, 20, 20, 0.001, 1.0, 0.0],  # below conf after obj * cls (not strictly above 0.001)
    ]], dtype=torch.float32)
    pred = torch.cat((pred, pred * torch.tensor([1, 1, 1, 1, 0, 1, 1.0])))    # image 2: all objectness 0
    out = non_max_suppression(pred, "yolov5", conf_thres=0.001, iou_thres=0.5)
    assert len(out) == 2 and out[1].shape == (0, 6)
    det = out[0]
    assert det[:, 4].tolist() == pytest.approx([0.9, 0.7, 0.3, 0.25])
    assert det[:, 5].tolist() == [0, 1, 0, 1]
    assert det[0, :4].tolist() == [40, 40, 60, 60]
    assert non_max_suppression(pred, "yolov5", multi_label=False)[0][:, 4].tolist() == pytest.approx([0.9, 0.7, 0.3])
    # class-agnostic: the 0.7 box (IoU 0.9 with the 0.9 one) and the second label of the 0.3 box go
    assert non_max_suppression(pred, "yolov5", agnostic=True, iou_thres=0.5)[0][:, 4].tolist() == pytest.approx(
        [0.9, 0.3])
    assert len(non_max_suppression(pred, "yolov5", max_det=2)[0]) == 2


def test_nms_matches_a_per_image_reference():
    """Batched NMS equals a plain per-image loop around torchvision's batched_nms."""
    g = torch.Generator().manual_seed(0)
    b, n, nc = 3, 400, 4
    xy = torch.rand(b, n, 2, generator=g) * 100
    wh = 5 + torch.rand(b, n, 2, generator=g) * 30
    obj = torch.rand(b, n, 1, generator=g)
    cls = torch.rand(b, n, nc, generator=g) ** 3
    pred = torch.cat((xy, wh, obj, cls), dim=2)
    conf, iou, max_det = 0.05, 0.5, 150
    out = non_max_suppression(pred, "yolov5", conf, iou, max_det)
    for i in range(b):
        boxes = torch.cat((xy[i] - wh[i] / 2, xy[i] + wh[i] / 2), dim=1)
        scores = cls[i] * obj[i]
        r, c = (scores > conf).nonzero(as_tuple=True)
        keep = torchvision.ops.batched_nms(boxes[r], scores[r, c], c, iou)[:max_det]
        ref = torch.cat((boxes[r][keep], scores[r, c][keep, None], c[keep, None].float()), dim=1)
        assert len(ref) > 50 and torch.allclose(out[i], ref)
    # ultralytics layout of the same scores gives the same detections
    ultra = torch.cat((xy, wh, cls * obj), dim=2).transpose(1, 2)
    for a, r in zip(non_max_suppression(ultra, "ultralytics", conf, iou, max_det), out):
        assert torch.allclose(a, r)
    # max_candidates keeps the best per image
    few = non_max_suppression(pred, "yolov5", conf, iou, max_det, max_candidates=20)
    assert all(len(f) <= 20 and f[0, 4] == o[0, 4] for f, o in zip(few, out))


# ------------------------------------------------------------------------------------------------- scorers
def _synthetic_coco(seed: int):
    """Random GT (with crowd boxes, empty images, a category without GT) and detections jittered from it plus
    false positives, duplicates, tied scores and one (image, category) with more than 100 detections."""
    rng = np.random.default_rng(seed)
    img_ids = sorted(rng.choice(10_000, 40, replace=False).tolist())
    cat_ids = [1, 3, 7, 8, 20]
    gt = {"images": [{"id": i, "height": 480, "width": 640} for i in img_ids],
          "categories": [{"id": c, "name": f"c{c}"} for c in cat_ids], "annotations": []}
    dets = []
    for img in img_ids[:-5]:
        for _ in range(rng.integers(0, 12)):
            x, y = rng.uniform(0, 500), rng.uniform(0, 380)
            w, h = rng.uniform(2, 140), rng.uniform(2, 100)
            cat = int(rng.choice(cat_ids[:4]))
            crowd = int(rng.random() < 0.08)
            gt["annotations"].append({"id": len(gt["annotations"]) + 1, "image_id": img, "category_id": cat,
                                      "bbox": [x, y, w, h], "area": w * h * (0.5 if crowd else 1.0),
                                      "iscrowd": crowd})
            for _ in range(rng.integers(0, 4)):
                j = rng.normal(0, 0.08, 4) * [w, h, w, h]
                dets.append((img, cat if rng.random() < 0.9 else int(rng.choice(cat_ids)),
                             [x + j[0], y + j[1], max(1.0, w + j[2]), max(1.0, h + j[3])], rng.random()))
        for _ in range(rng.integers(0, 6)):                                  # false positives
            dets.append((img, int(rng.choice(cat_ids)), [*rng.uniform(0, 500, 2), *rng.uniform(5, 100, 2)],
                         rng.random() * 0.5))
    for _ in range(130):                                                     # > 100 dets in one group
        dets.append((img_ids[0], 1, [*rng.uniform(0, 300, 2), *rng.uniform(20, 300, 2)], rng.random()))
    img, cat, box, score = zip(*dets)
    score = np.round(np.array(score), 2)                                     # plenty of tied scores
    return gt, Detections(np.array(img), np.array(cat), np.array(box), score)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_fast_scorer_equals_pycocotools_on_synthetic_detections(seed):
    gt, dets = _synthetic_coco(seed)
    for image_ids in (None, [im["id"] for im in gt["images"][::2]]):
        ref = PycocotoolsScorer(gt, image_ids).score(dets, per_class=True)
        fast = FastCocoScorer(gt, image_ids).score(dets, per_class=True)
        assert 0.2 < ref.map50_95 < 0.9
        assert fast.map50_95 == pytest.approx(ref.map50_95, abs=1e-4)
        assert fast.map50 == pytest.approx(ref.map50, abs=1e-4)
        assert fast.per_class_ap50_95.keys() == ref.per_class_ap50_95.keys()
        for k, v in ref.per_class_ap50_95.items():
            assert fast.per_class_ap50_95[k] == pytest.approx(v, abs=1e-4, nan_ok=True)
            assert fast.per_class_ap50[k] == pytest.approx(ref.per_class_ap50[k], abs=1e-4, nan_ok=True)
        assert np.isnan(ref.per_class_ap50_95[20])                           # no GT of category 20


def test_fast_scorer_equals_pycocotools_on_real_crowd_annotations(coco128_dir):
    gt = json.loads((coco128_dir / "annotations" / "instances_train2017.json").read_text())
    rng = np.random.default_rng(5)
    anns = gt["annotations"]
    box = np.array([a["bbox"] for a in anns]) * rng.normal(1, 0.05, (len(anns), 4))
    dets = Detections(np.array([a["image_id"] for a in anns]), np.array([a["category_id"] for a in anns]), box,
                      rng.random(len(anns)))
    ref = PycocotoolsScorer(gt).score(dets)
    fast = FastCocoScorer(gt).score(dets)
    assert ref.map50_95 > 0.3
    assert (fast.map50_95, fast.map50) == pytest.approx((ref.map50_95, ref.map50), abs=1e-4)


def test_scorers_without_detections():
    gt, _ = _synthetic_coco(0)
    empty = Detections.concat([])
    assert PycocotoolsScorer(gt).score(empty).map50_95 == 0.0
    assert FastCocoScorer(gt).score(empty).map50_95 == 0.0


# ------------------------------------------------------------------------------------------------- evaluate
class _OracleModel(nn.Module):
    """Returns ground-truth boxes (already in network pixels) as predictions, batch by batch, in either layout."""

    def __init__(self, per_image, nc: int, layout: str, n: int = 16):
        super().__init__()
        self.dummy = nn.Parameter(torch.zeros(1))
        self.per_image, self.nc, self.layout, self.n, self.pos = per_image, nc, layout, n, 0

    def forward(self, x):
        out = torch.zeros(x.shape[0], self.n, 5 + self.nc)
        for k in range(x.shape[0]):
            for j, (cls, xyxy) in enumerate(self.per_image[self.pos + k]):
                out[k, j, :4] = torch.tensor([(xyxy[0] + xyxy[2]) / 2, (xyxy[1] + xyxy[3]) / 2,
                                              xyxy[2] - xyxy[0], xyxy[3] - xyxy[1]])
                out[k, j, 4], out[k, j, 5 + cls] = 1.0, 0.9
        self.pos += x.shape[0]
        if self.layout == "ultralytics":
            out = torch.cat((out[..., :4], out[..., 5:]), dim=2).transpose(1, 2)
        return out, ["raw maps"]


def _tiny_dataset(tmp_path):
    rng = np.random.default_rng(0)
    for i, (h, w) in enumerate([(120, 200), (300, 100), (64, 64), (97, 211)]):
        img = tmp_path / "images" / "val" / f"img{i}.jpg"
        img.parent.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(img), rng.integers(0, 255, (h, w, 3), dtype=np.uint8))
        lab = tmp_path / "labels" / "val" / f"img{i}.txt"
        lab.parent.mkdir(parents=True, exist_ok=True)
        rows = [f"{rng.integers(0, 3)} {rng.uniform(.3, .7):.5f} {rng.uniform(.3, .7):.5f} "
                f"{rng.uniform(.1, .5):.5f} {rng.uniform(.1, .5):.5f}" for _ in range(i + 1)]
        lab.write_text("\n".join(rows) + "\n")
    (tmp_path / "data.yaml").write_text(yaml.safe_dump({"val": "images/val", "names": ["x", "y", "z"]}))
    return tmp_path / "data.yaml"


def _oracle_for(es: EvalSet, layout: str, shift: float = 0.0) -> _OracleModel:
    per_image = []
    cls_of = {c: i for i, c in enumerate(es.category_ids)}
    for img_id, info in zip(es.image_ids, es.infos):
        boxes = []
        for a in es.gt["annotations"]:
            if a["image_id"] == img_id:
                x, y, w, h = a["bbox"]
                net = info.to_input(torch.tensor([[x + shift * w, y, x + w + shift * w, y + h]]))[0]
                boxes.append((cls_of[a["category_id"]], net.tolist()))
        per_image.append(boxes)
    return _OracleModel(per_image, len(es.category_ids), layout)


@pytest.mark.parametrize("layout", ["yolov5", "ultralytics"])
def test_evaluate_oracle_scores_one(tmp_path, layout):
    """GT boxes pushed through the letterbox and back score mAP 1: scale-back, ids and layouts line up."""
    es = EvalSet.from_yaml(_tiny_dataset(tmp_path), "val", Preprocess.yolo(96), progress=False)
    assert es.images.shape == (4, 3, 96, 96) and es.category_ids == [0, 1, 2] and es.num_annotations == 10
    for scorer in ("pycocotools", "fast"):
        res = evaluate(_oracle_for(es, layout), es, layout=layout, batch_size=3, scorer=scorer, per_class=True,
                       progress=False)
        assert res.map50_95 == pytest.approx(1.0) and res.map50 == pytest.approx(1.0)
        assert res.num_images == 4 and res.num_detections == 10 and set(res.per_class) == {"x", "y", "z"}
    shifted = evaluate(_oracle_for(es, layout, shift=0.3), es, layout=layout, progress=False)
    assert 0.0 < shifted.map50_95 < 0.5 and shifted.map50 == pytest.approx(1.0)


def test_evaluate_with_coco_ids(tmp_path):
    data = _tiny_dataset(tmp_path)
    es = EvalSet.from_yaml(data, "val", Preprocess.yolo(64), coco_ids=True, names=COCO80_NAMES, progress=False)
    assert es.category_ids == COCO80_TO_91
    assert {a["category_id"] for a in es.gt["annotations"]} <= {1, 2, 3}
    model = _oracle_for(es, "yolov5")
    dets, timings = detect(model, es, layout="yolov5", progress=False)
    assert set(dets.category_id.tolist()) <= {1, 2, 3} and timings["inference"] >= 0
    assert evaluate(_oracle_for(es, "yolov5"), es, layout="yolov5", progress=False).map50_95 == pytest.approx(1.0)


@pytest.fixture(scope="module")
def yolov5n(yolov5n_path):
    if not YOLOV5_REPO_FIXTURE.is_dir():
        pytest.skip(f"training-repository fixture not found at {YOLOV5_REPO_FIXTURE}")
    from qdqtorch.models import load_model
    return load_model(yolov5n_path, repo=YOLOV5_REPO_FIXTURE)


def test_evaluate_real_yolov5n(yolov5n, coco128_dir):
    """16 real val images at 320 px: plausible mAP, both scorers agree, training mode restored."""
    es = EvalSet.from_yaml(coco128_dir / "coco128.yaml", "val", Preprocess.yolo(320), num_images=16, progress=False)
    assert len(es) == 16 and es.category_ids == COCO80_TO_91
    assert read_yolo_labels(coco128_dir / "labels" / "val2017" / "000000000139.txt").shape[1] == 5
    yolov5n.model.train()
    ref = evaluate(yolov5n.model, es, layout=yolov5n.layout, scorer="pycocotools", progress=False)
    assert yolov5n.model.training
    yolov5n.model.eval()
    assert ref.map50_95 > 0.2 and ref.map50 > 0.35 and ref.num_detections > 100
    fast = es.scorer("fast").score(ref.detections)          # same detections, the other scorer
    assert fast.map50_95 == pytest.approx(ref.map50_95, abs=1e-4)
    assert fast.map50 == pytest.approx(ref.map50, abs=1e-4)


def test_eval_set_from_coco_json(coco128_dir):
    """Images matched to the real instances json (with crowd boxes); an oracle scores 1 through the letterbox."""
    es = EvalSet.from_coco_json(coco128_dir / "images" / "train2017",
                                coco128_dir / "annotations" / "instances_train2017.json", Preprocess.yolo(128),
                                num_images=6, progress=False)
    assert len(es) == 6 and es.category_ids == COCO80_TO_91 and es.names == COCO80_NAMES
    assert {im["id"] for im in es.gt["images"]} == set(es.image_ids)
    assert all(a["image_id"] in es.image_ids for a in es.gt["annotations"])
    assert es.images.shape == (6, 3, 128, 128)
    res = evaluate(_oracle_for(es, "yolov5"), es, layout="yolov5", scorer="fast", progress=False)
    assert res.map50_95 == pytest.approx(1.0)


def test_eval_set_without_labels_is_an_error(tmp_path):
    img = tmp_path / "images" / "a.jpg"
    img.parent.mkdir()
    cv2.imwrite(str(img), np.zeros((8, 8, 3), np.uint8))
    with pytest.raises(FileNotFoundError, match="no YOLO label files"):
        EvalSet.from_yolo(img.parent, Preprocess.yolo(64), progress=False)
