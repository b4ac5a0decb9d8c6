"""The checks that keep a run from reporting nonsense silently: each warning names the layer/file and what to do."""
import warnings

import pytest
import torch
from torch import nn

from conftest import REPO_ROOT
from qdqtorch.data import Preprocess
from qdqtorch.data.checks import check_distinct, check_input_range, expected_range
from qdqtorch.quantize import calibrate, quantize_model
from qdqtorch.quantize.checks import check_amax

DEMO = REPO_ROOT / "assets" / "demo"


class _TwoConvs(nn.Module):
    def __init__(self):
        super().__init__()
        self.first = nn.Conv2d(3, 4, 3, padding=1)
        self.second = nn.Conv2d(4, 4, 3, padding=1)

    def forward(self, x):
        return self.second(torch.relu(self.first(x)) * self.gate)


def _calibrated(gate: float, scale: float = 1.0):
    torch.manual_seed(0)
    model = _TwoConvs().eval()
    model.gate = gate
    quantize_model(model)
    batches = [torch.rand(2, 3, 16, 16) * scale for _ in range(2)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")          # the calibrator's own "amax is 0" note; we test check_amax
        calibrate(model, batches, method="max", progress=False)
    return model


def test_amax_zero_and_tiny_are_named():
    assert check_amax(_calibrated(1.0), warn=False) == []
    with pytest.warns(UserWarning, match=r"second\._input_quantizer: .*zero.*dead input or broken preprocessing"):
        messages = check_amax(_calibrated(0.0))
    assert len(messages) == 1 and "first" not in messages[0]
    # a live but vanishing range: 1e-9 of the signal, far below 1e-6 x the second conv's max |weight|
    messages = check_amax(_calibrated(1e-9), warn=False)
    assert len(messages) == 1 and "second._input_quantizer" in messages[0] and "below 1e-06" in messages[0]


def test_input_range_0_255_data():
    pp = Preprocess.yolo(64)                                    # mean 0, std 255: inputs in 0..1
    assert expected_range(pp) == (0.0, 1.0)
    assert check_input_range([torch.rand(2, 3, 8, 8)], pp, warn=False) is None
    with pytest.warns(UserWarning, match=r"my_batches: model inputs span .*did you pass 0\.\.255 data\?"):
        check_input_range([torch.rand(2, 3, 8, 8) * 255], pp, "my_batches")
    assert "all-zero" in check_input_range([torch.zeros(1, 3, 8, 8)], pp, warn=False)
    imagenet = Preprocess.from_dict({"imgsz": 64, "mean": [123.7, 116.3, 103.5], "std": [58.4, 57.1, 57.4]})
    lo, hi = expected_range(imagenet)
    assert lo == pytest.approx(-123.7 / 58.4) and hi == pytest.approx((255 - 103.5) / 57.4)
    assert check_input_range([torch.randn(1, 3, 8, 8)], imagenet, warn=False) is None


def test_calibrating_on_the_evaluation_images_is_flagged():
    val = sorted((DEMO / "images" / "val").glob("*.jpg"))
    train = sorted((DEMO / "images" / "train").glob("*.jpg"))
    assert check_distinct(train, val, warn=False) is None
    with pytest.warns(UserWarning, match=r"4 of the 4 calibration images are evaluation images .*0000\.jpg"):
        check_distinct(val[:4], val)


def test_model_from_yaml_has_random_weights():
    pytest.importorskip("ultralytics")
    from qdqtorch.models import load_model
    loaded = load_model("yolov8n.yaml")
    assert not loaded.trained and "random weights" in loaded.untrained_warning()
    assert "yolov8n.yaml" in loaded.untrained_warning()
    assert load_model(DEMO / "shapes_detector.safetensors").untrained_warning() is None
