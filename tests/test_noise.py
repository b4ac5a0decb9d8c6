"""Sensitivity that knows its own noise: the bootstrap over images (eval.bootstrap), significance of entries, the
recommendation limited to impacts above the noise, and what a Spearman agreement means."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import yaml

from qdqtorch.eval.bootstrap import bootstrap_map
from qdqtorch.eval.scoring import Detections, PycocotoolsScorer
from qdqtorch.sensitivity import Metric, SweepSettings, run_sensitivity
from qdqtorch.sensitivity.noise import NO_SIGNIFICANT, spearman_meaning
from test_sensitivity_toy import build_model, calib_batches, one_thread, quantized_toy  # noqa: F401


def _synthetic(n_images: int, seed: int, hit_rate: float = 0.7):
    """GT boxes and detections where each GT is found (exactly) with probability `hit_rate`, plus false positives."""
    rng = np.random.default_rng(seed)
    anns, rows = [], []
    for img in range(1, n_images + 1):
        for _ in range(rng.integers(1, 5)):
            box = [float(v) for v in rng.uniform(0, 100, 2)] + [float(v) for v in rng.uniform(5, 40, 2)]
            cat = int(rng.integers(1, 3))
            anns.append({"id": len(anns) + 1, "image_id": img, "category_id": cat, "bbox": box,
                         "area": box[2] * box[3], "iscrowd": 0})
            if rng.random() < hit_rate:
                rows.append((img, cat, box, rng.uniform(0.3, 1)))
        for _ in range(rng.integers(0, 3)):
            rows.append((img, int(rng.integers(1, 3)), list(rng.uniform(100, 140, 2)) + [10.0, 10.0],
                         rng.uniform(0, 1)))
    gt = {"images": [{"id": i, "height": 200, "width": 200} for i in range(1, n_images + 1)], "annotations": anns,
          "categories": [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}]}
    dets = Detections([r[0] for r in rows], [r[1] for r in rows], [r[2] for r in rows], [r[3] for r in rows])
    return gt, dets, list(range(1, n_images + 1))


def test_bootstrap_value_matches_pycocotools_and_perfect_detections_have_no_noise():
    gt, dets, ids = _synthetic(30, seed=0)
    boot = bootstrap_map(gt, dets, ids, resamples=50)
    assert boot.value == pytest.approx(PycocotoolsScorer(gt, ids).score(dets).map50_95, abs=1e-12)
    assert 0 < boot.std < 0.2 and boot.low < boot.value < boot.high
    perfect = Detections([a["image_id"] for a in gt["annotations"]], [a["category_id"] for a in gt["annotations"]],
                         [a["bbox"] for a in gt["annotations"]], np.ones(len(gt["annotations"])))
    exact = bootstrap_map(gt, perfect, ids, resamples=20)
    assert exact.value == pytest.approx(1.0) and exact.std == pytest.approx(0.0, abs=1e-12)


def _rebuilt_draw(gt: dict, dets: Detections, ids: list, pick) -> float:
    """One bootstrap draw the slow, independent way: duplicate the drawn images' GT and detections under new ids
    and score the result with pycocotools."""
    anns, rows = [], []
    for new_id, k in enumerate(pick):
        anns += [{**a, "id": len(anns) + 1 + j, "image_id": new_id}
                 for j, a in enumerate(a for a in gt["annotations"] if a["image_id"] == ids[k])]
        rows += [(new_id, i) for i in np.nonzero(dets.image_id == ids[k])[0]]
    idx = np.array([i for _, i in rows], dtype=np.int64)
    sample = Detections(np.array([n for n, _ in rows]), dets.category_id[idx], dets.bbox[idx], dets.score[idx])
    sample_gt = {"images": [{"id": i} for i in range(len(pick))], "annotations": anns,
                 "categories": gt["categories"]}
    return PycocotoolsScorer(sample_gt, list(range(len(pick)))).score(sample).map50_95


def test_bootstrap_draws_equal_rescoring_each_draw_from_scratch():
    # the bootstrap matches once and re-ranks per draw; every draw must equal duplicating the drawn images and
    # scoring them afresh. Ties in score across images (0.5 everywhere) exercise COCO's image-order tie break
    gt, dets, ids = _synthetic(25, seed=2)
    tied = Detections(dets.image_id, dets.category_id, dets.bbox, np.where(dets.score > 0.6, 0.5, dets.score))
    ids = ids[::-1]                                        # positions of image_ids are not the sorted ids
    for candidate in (dets, tied):
        boot = bootstrap_map(gt, candidate, ids, resamples=12, seed=7)
        rng = np.random.default_rng(7)
        draws = [_rebuilt_draw(gt, candidate, ids, rng.integers(0, len(ids), len(ids))) for _ in range(12)]
        assert boot.std == pytest.approx(float(np.std(draws, ddof=1)), abs=1e-9)
        assert boot.low == pytest.approx(float(np.percentile(draws, 2.5)), abs=1e-9)
        assert boot.high == pytest.approx(float(np.percentile(draws, 97.5)), abs=1e-9)
        assert boot.std > 0


def test_bootstrap_noise_shrinks_like_one_over_sqrt_n():
    """Four copies of the same images: the same mAP, half the bootstrap spread (1/sqrt(4))."""
    gt, dets, ids = _synthetic(40, seed=1)
    n = len(ids)
    big_anns = [{**a, "id": a["id"] + k * 10_000, "image_id": a["image_id"] + k * n} for k in range(4)
                for a in gt["annotations"]]
    big_gt = {**gt, "images": [{"id": i + k * n} for k in range(4) for i in ids], "annotations": big_anns}
    big = Detections(np.concatenate([dets.image_id + k * n for k in range(4)]), np.tile(dets.category_id, 4),
                     np.tile(dets.bbox, (4, 1)), np.tile(dets.score, 4))
    small = bootstrap_map(gt, dets, ids, resamples=300, seed=3)
    large = bootstrap_map(big_gt, big, [i + k * n for k in range(4) for i in ids], resamples=300, seed=4)
    assert large.value == pytest.approx(small.value, abs=1e-9)
    assert large.std / small.std == pytest.approx(0.5, rel=0.25)


# ---- a sweep whose metric carries a bootstrap: significance and the recommendation ---------------------------
_IMAGES = torch.randn(16, 3, 8, 8, generator=torch.Generator().manual_seed(5))
_BIAS = torch.linspace(0.0, 0.6, 16)     # how "hard" each image is: spread between images, as in real data


class PerImageMetric(Metric):
    """Mean over 16 images of (1 - image difficulty x `spread` - the image's relative output error against float);
    `noise` bootstraps that mean over the images."""

    def __init__(self, spread: float):
        self.reference = build_model()(_IMAGES).detach()
        self.spread = spread
        super().__init__(self.__call__, f"per_image_{spread}", True, {"metric": f"per_image_{spread}"})

    @torch.no_grad()
    def per_image(self, model) -> np.ndarray:
        y = model(_IMAGES)
        err = (y - self.reference).norm(dim=1) / self.reference.norm(dim=1)
        return (1 - self.spread * _BIAS - err).double().numpy()

    def __call__(self, model) -> float:
        return float(self.per_image(model).mean())

    def noise(self, model, resamples=200, seed=0) -> dict:
        scores = self.per_image(model)
        rng = np.random.default_rng(seed)
        draws = [scores[rng.integers(0, len(scores), len(scores))].mean() for _ in range(resamples)]
        return {"value": float(scores.mean()), "std": float(np.std(draws, ddof=1))}


def _sweep(tmp_path, spread):
    return run_sensitivity(quantized_toy(), PerImageMetric(spread), tmp_path, SweepSettings(chart=False),
                           progress=False, proxy_data=calib_batches()[:1],
                           base_config={"kind": "quant", "data": {}})


def test_a_sweep_where_no_layer_matters_recommends_nothing(tmp_path):
    result = _sweep(tmp_path, spread=1.0)
    impacts = [e["impact"] for e in result["entries"]]
    assert max(impacts) > 0                                       # some layers do cost a little ...
    assert max(impacts) < result["noise"]["std"]                  # ... less than the images' own spread
    assert not any(e["significant"] for e in result["entries"])
    rec = result["recommendation"]
    assert rec["units"] == [] and rec["ignore"] == [] and NO_SIGNIFICANT in rec["note"]
    config_text = (tmp_path / "sensitivity_config.yaml").read_text()
    assert NO_SIGNIFICANT in config_text and yaml.safe_load(config_text)["quant"]["ignore"] == []
    md = (tmp_path / "sensitivity.md").read_text()
    assert NO_SIGNIFICANT in md.lower() and "bootstrap over the images" in md
    assert "Spearman" in md and ("prefilter" in md or "do not" in md)


def test_without_spread_between_images_the_real_impacts_are_recommended(tmp_path):
    result = _sweep(tmp_path, spread=0.0)
    significant = [e["unit"] for e in result["entries"] if e["significant"]]
    assert significant and result["recommendation"]["units"] == significant[:3]
    assert all(e["impact"] > result["noise"]["std"] for e in result["entries"] if e["significant"])
    assert "note" not in result["recommendation"]
    # the noise is journaled: a rerun resumes without re-measuring it and finds the same
    again = _sweep(tmp_path, spread=0.0)
    assert again["noise"] == result["noise"] and again["timing"]["evaluations_this_run"] == 0


def test_custom_metric_without_noise_keeps_the_old_behaviour(tmp_path):
    result = run_sensitivity(quantized_toy(), Metric(lambda m: PerImageMetric(1.0)(m), "plain"), tmp_path,
                             SweepSettings(chart=False), progress=False)
    assert result["noise"] is None and all(e["significant"] is None for e in result["entries"])
    assert result["recommendation"]["units"]


def test_spearman_meaning():
    assert "usable prefilter" in spearman_meaning(0.85, 20)
    assert "roughly" in spearman_meaning(0.5, 20)
    assert "not" in spearman_meaning(-0.3, 20) and "-0.30" in spearman_meaning(-0.3, 20)
    assert "cannot be computed" in spearman_meaning(None, 2)
