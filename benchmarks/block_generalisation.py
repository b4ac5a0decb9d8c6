#!/usr/bin/env python
"""Does block reconstruction lower the network's output error beyond its own images? YOLOv5n, `tensorrt` rules, mse
calibration on 32 train images at 320 px; relative error of the three raw Detect maps (error energy / float energy,
summed) on the 32 recovery images and on 64 held-out val images, before and after reconstruct_blocks.

    OMP_NUM_THREADS=1 python benchmarks/block_generalisation.py ["dict(iters=300, drop=0.5)"]
"""
from __future__ import annotations

import copy
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from _common import ROOT, SHARED  # noqa: E402


def main(argv: list) -> int:
    import torch
    from qdqtorch import QuantConfig, calibrate, quantize_model
    from qdqtorch.data import Preprocess, calibration_loader
    from qdqtorch.models import load_model
    from qdqtorch.quantize import disable_quantization
    from qdqtorch.recovery.blocks import reconstruct_blocks
    from qdqtorch.recovery.ranges import _leaves, _output_error
    from qdqtorch.rules import apply_placement, placement_from_name

    torch.set_num_threads(1)
    kw = eval(argv[0]) if argv else {}   # noqa: S307 - benchmark options typed by the user
    loaded = load_model(str(SHARED / "models/yolov5n.pt"), repo=str(ROOT / "tests/fixtures/yolov5_repo"))
    pp = Preprocess(imgsz=320, stride=loaded.stride)
    data = str(SHARED / "data/coco128/coco128.yaml")

    def first(b):
        return b[0] if isinstance(b, (list, tuple)) else b
    train = torch.cat([first(b) for b in calibration_loader(data, pp, batch_size=16, num_images=32)])
    val = torch.cat([first(b) for b in calibration_loader(data, pp, batch_size=16, num_images=64, split="val")])
    model = copy.deepcopy(loaded.model)
    quantize_model(model, QuantConfig(ignore=list(loaded.default_ignore)))
    apply_placement(model, placement_from_name("tensorrt"), train[:1])
    calibrate(model, calibration_loader(data, pp, batch_size=16, num_images=32), method="mse", progress=False)

    def err(images: torch.Tensor) -> float:
        out = []
        with torch.no_grad():
            for i in range(0, len(images), 16):
                x = images[i:i + 16]
                with disable_quantization(model):
                    f = [t.clone() for t in _leaves(model(x))]
                q = _leaves(model(x))
                out.append(float(_output_error(q[1:], f[1:])))   # raw Detect maps only
        return sum(out) / len(out)
    print(f"before: train {err(train):.4g} val {err(val):.4g}", flush=True)
    report = reconstruct_blocks(model, [train], num_images=32, iters=int(kw.pop("iters", 300)), progress=False, **kw)
    print(report)
    print(f"after: train {err(train):.4g} val {err(val):.4g}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
