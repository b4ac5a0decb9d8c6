"""The real YOLOv5n checkpoint: replacement covers every conv, max calibration keeps outputs close to float."""
import torch

import qdqtorch
from qdqtorch.data import Preprocess, calibration_loader
from qdqtorch.models import load_model

from conftest import YOLOV5_REPO_FIXTURE


def test_yolov5n_quantized_output_cosine_above_099(yolov5n_path, coco128_dir):
    model = load_model(yolov5n_path, repo=YOLOV5_REPO_FIXTURE).model
    val = calibration_loader(coco128_dir / "images" / "val2017", Preprocess(imgsz=320), batch_size=4, num_images=4)
    x = next(iter(val))
    with torch.no_grad():
        float_pred, float_raw = model(x)
    report = qdqtorch.quantize_model(model)
    assert len(report.replaced) == 60 and not report.ignored
    calib = calibration_loader(coco128_dir / "images" / "train2017", Preprocess(imgsz=320), batch_size=4,
                               num_images=8)
    qdqtorch.calibrate(model, calib, progress=False)
    with torch.no_grad():
        quant_pred, quant_raw = model(x)
        with qdqtorch.disable_quantization(model):
            restored = model(x)[0]
    assert torch.equal(restored, float_pred)  # disabled quantizers: bit-identical to float

    def cosine(a, b):
        return float(torch.nn.functional.cosine_similarity(a.flatten(), b.flatten(), dim=0))

    assert cosine(float_pred, quant_pred) > 0.99
    for f, q in zip(float_raw, quant_raw):  # the head's logits at each scale
        assert cosine(f, q) > 0.99
    state = {k: v for k, v in model.state_dict().items() if k.endswith("_amax")}
    assert len(state) == 120 and "model.0.conv._input_quantizer._amax" in state
