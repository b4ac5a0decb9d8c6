#!/usr/bin/env python
"""Where does INT8's fidelity loss come from? Fidelity (fake quant, vs the float model's own detections) with only
the weights quantized, only the activations, both, and both restricted to one part of the network at a time.

    python benchmarks/fidelity_breakdown.py --imgsz 320 --num-calib 32 --num-eval 128

Calibration is mse on `--num-calib` train images (`--grid` for the activations), the placement `--rules`; every
variant reuses that calibration and only switches quantizers off (qdqtorch.quantize.disable_quantization), so the
differences are the error sources. The last row is the metric's own floor: the float model, every quantizer off,
fed the images plus Gaussian noise of one 8-bit pixel step (sigma 1/255): a change no one would call a different
model, which still moves some boxes.
"""
from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from _common import add_protocol_args, machine  # noqa: E402

# YOLOv5n's parts by module index: backbone 0-9, neck (FPN/PAN) 10-23, Detect 24
PARTS = {"backbone": range(0, 10), "neck": range(10, 24), "head": range(24, 25)}


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_protocol_args(p)
    p.add_argument("--rules", default="tensorrt")
    p.add_argument("--grid", choices=["symmetric", "shifted"], default="symmetric", help="activation grid")
    p.add_argument("--parts", action="store_true", help="also quantize one part of the network at a time")
    return p.parse_args(argv)


def _index(name: str) -> int:
    m = re.search(r"(?:^|\.)model\.(\d+)(?:\.|$)", name)
    return int(m.group(1)) if m else -1


NOISE_FLOOR = "float, input + 1/255 Gaussian noise (the metric's floor)"


class _InputNoise(torch.nn.Module):
    """The wrapped model fed its input plus seeded N(0, (1/255)^2) noise: one 8-bit pixel step."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model
        self.generator = torch.Generator().manual_seed(0)

    def forward(self, x: torch.Tensor):
        noise = torch.randn(x.shape, generator=self.generator).to(x) / 255.0
        return self.model(x + noise)


def main(argv=None) -> int:
    args = parse_args(argv)
    print(machine())
    from qdqtorch import QuantConfig, calibrate, quantize_model
    from qdqtorch.data import Preprocess, calibration_loader
    from qdqtorch.eval import EvalSet
    from qdqtorch.eval.fidelity import fidelity, float_reference, outputs_line
    from qdqtorch.models import load_model
    from qdqtorch.quantize import disable_quantization, named_quantizers, weight_quantizer_ids
    from qdqtorch.rules import apply_placement, placement_from_name

    loaded = load_model(args.model, repo=args.repo)
    pp = Preprocess(imgsz=args.imgsz, stride=loaded.stride)
    eval_set = EvalSet.from_yaml(args.data, "val", pp, num_images=args.num_eval, progress=False)
    reference = float_reference(loaded.model, eval_set, layout=loaded.layout)
    model = loaded.model
    quantize_model(model, QuantConfig(ignore=list(loaded.default_ignore)))
    apply_placement(model, placement_from_name(args.rules), next(eval_set.batches(1))[1])
    calibrate(model, calibration_loader(args.data, pp, batch_size=16, num_images=args.num_calib), method="mse",
              progress=False, grid=args.grid)
    weights = weight_quantizer_ids(model)
    names = {id(q): n for n, q in named_quantizers(model)}

    def is_weight(name: str) -> bool:
        return id(dict(named_quantizers(model))[name]) in weights

    variants = {"both": None, "weights only": lambda n: not is_weight(n), "activations only": is_weight}
    if args.parts:
        for part, idx in PARTS.items():
            variants[f"both, {part} only"] = (lambda r: (lambda n: _index(n) not in r))(idx)
            variants[f"both, all but {part}"] = (lambda r: (lambda n: _index(n) in r))(idx)
            variants[f"activations, {part} only"] = (lambda r: (lambda n: is_weight(n) or _index(n) not in r))(idx)
    variants[NOISE_FLOOR] = lambda n: True
    del names
    print(f"| variant ({args.rules}, {args.grid} grid, {args.imgsz} px, {args.num_calib} calib / {len(eval_set)} "
          "val) | fidelity mAP50-95 | mAP50 | output SNR |\n|---|---|---|---|")
    for label, off in variants.items():
        toggle = disable_quantization(model, off) if off is not None else None
        try:
            r = fidelity(_InputNoise(model) if label == NOISE_FLOOR else model, reference)
        finally:
            if toggle is not None:
                toggle.restore()
        print(f"| {label} | {r.map50_95:.3f} | {r.map50:.3f} | {outputs_line(r.outputs)} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
