"""Sensitivity on the real YOLOv5n with real COCO images from ../shared (small: few images, small size)."""
from __future__ import annotations

import pytest

import qdqtorch
from qdqtorch.sensitivity import SweepSettings, run_sensitivity
from test_sensitivity_toy import one_thread  # noqa: F401
from conftest import YOLOV5_REPO_FIXTURE

BROKEN = "model.6.cv3.conv"


@pytest.fixture(scope="module")
def settings(tmp_path_factory, coco128_dir, yolov5n_path):
    from qdqtorch.pipeline import PTQSettings
    return PTQSettings(model=str(yolov5n_path), repo=str(YOLOV5_REPO_FIXTURE),
                       data=str(coco128_dir / "coco128.yaml"), num_calib=8, num_eval=8, batch=8, imgsz=224,
                       scorer="fast", export=False, skip_float_eval=True, rules=None)  # per-layer units


def test_yolov5n_broken_layer_ranks_first(settings, tmp_path):
    from qdqtorch.sensitivity.session import build_session
    session = build_session(settings, tmp_path, proxy_images=2, progress=False)
    quantizers = dict(qdqtorch.named_quantizers(session.model))
    q = quantizers[f"{BROKEN}._input_quantizer"]
    q.amax = q.amax / 100
    result = run_sensitivity(session.model, session.metric, tmp_path, SweepSettings(prefilter=4, chart=False),
                             proxy_data=session.proxy_batches, progress=False)
    assert result["num_units"] == 60  # YOLOv5n: 60 convs (the Detect convs included)
    assert result["proxy"]["ranking"][0] == BROKEN
    assert result["entries"][0]["unit"] == BROKEN
    base = result["baselines"]
    assert base["float"]["metric"] > base["quantized"]["metric"] + 0.01  # the broken layer really hurts
    assert result["entries"][0]["impact"] > 0.01


def test_yolov5n_budget_config_reproduces_through_ptq(settings, tmp_path):
    from qdqtorch.pipeline import PTQSettings, run_ptq
    from qdqtorch.sensitivity.session import build_session
    session = build_session(settings, tmp_path, proxy_images=2, progress=False)
    result = run_sensitivity(session.model, session.metric, tmp_path,
                             SweepSettings(prefilter=3, budget="0.0", budget_max_units=2, chart=False),
                             proxy_data=session.proxy_batches, base_config=session.base_config,
                             verify_factory=session.verify_factory, progress=False)
    b = result["budget"]
    verified = b["verification"]["metric"]
    assert b["verification"]["method"].startswith("fresh model")
    assert b["verification"]["within_budget"] == (result["baselines"]["float"]["metric"] - verified <= 0)
    assert len(b["selected"]) <= 2
    config = tmp_path / "sensitivity_config.yaml"
    ptq = run_ptq(PTQSettings.from_file(config, out=str(tmp_path / "ptq")), progress=False, log=lambda *_: None)
    assert set(result["recommendation"]["ignore"]) <= set(ptq.summary["quantization"]["config"]["ignore"])
    assert ptq.summary["int8"]["map50_95"] == pytest.approx(verified, abs=1e-9)
