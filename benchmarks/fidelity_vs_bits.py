#!/usr/bin/env python
"""How much quantization error does a fidelity goal need? Fidelity (fake quant, vs the float model's own detections)
with activations and weights at more than 8 bits: each extra bit halves that tensor's rounding error, so the bits a
target fidelity needs say how far beyond what 8-bit post-training recovery can reach it lies.

    python benchmarks/fidelity_vs_bits.py --imgsz 320 --num-calib 32

Every variant quantizes the model afresh (per-tensor activations, per-channel weights, `--rules`), calibrates with
mse on `--num-calib` train images and is scored on the val images; 8/8 is what TensorRT runs.
"""
from __future__ import annotations

import argparse
import copy
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from _common import add_protocol_args, machine  # noqa: E402

def grid_use(model, batch) -> str:
    """How much of the signed int8 grid [-127, 127] the activations use: the most negative code each activation
    quantizer sees on one batch (-127 would use the whole negative half; post-SiLU tensors stop near -0.28 / step)."""
    import torch

    from qdqtorch.quantize import named_quantizers, weight_quantizer_ids
    weights = weight_quantizer_ids(model)
    lowest: dict = {}
    hooks = [q.register_forward_pre_hook(lambda m, a, name=name: lowest.__setitem__(
                 name, min(lowest.get(name, 0.0), float(a[0].min()) / float(m.amax.max()) * 127)))
             for name, q in named_quantizers(model) if id(q) not in weights and q.amax is not None]
    with torch.no_grad():
        model(batch)
    for h in hooks:
        h.remove()
    codes = sorted(lowest.values())
    unused = sum(1 for c in codes if c > -16) / len(codes)
    return (f"{len(codes)} activation quantizers; most negative code seen: median {codes[len(codes) // 2]:.1f}, "
            f"lowest {codes[0]:.1f} of -127; {unused:.0%} of them use fewer than 16 of the 127 negative codes, i.e. "
            "about half of the signed int8 grid (one bit) stays unused")


def asymmetric_what_if(model, calibration, reference, fidelity) -> str:
    """What-if, not a qdqtorch mode: the same calibrated model with every activation on an asymmetric 8-bit grid
    [observed min, amax] (uint8 with a zero point, as ONNX Runtime's own quantizer does; TensorRT accepts only zero
    points of 0, i.e. the symmetric grid). A forward hook replaces each activation quantizer's output."""
    import torch

    from qdqtorch.quantize import named_quantizers, weight_quantizer_ids
    weights = weight_quantizer_ids(model)
    acts = [(n, q) for n, q in named_quantizers(model) if id(q) not in weights and q.amax is not None]
    low: dict = {}
    hooks = [q.register_forward_pre_hook(lambda m, a, n=n: low.__setitem__(n, min(low.get(n, 0.0), float(a[0].min()))))
             for n, q in acts]
    with torch.no_grad():
        for batch in calibration:
            model(batch[0] if isinstance(batch, (list, tuple)) else batch)
    for h in hooks:
        h.remove()

    def affine(lo: float, hi: float):
        scale = (hi - lo) / 255
        zero_point = int(round(-lo / scale))
        return lambda m, a, out: torch.fake_quantize_per_tensor_affine(a[0], scale, zero_point, 0, 255)

    hooks = [q.register_forward_hook(affine(low[n], float(q.amax.max()))) for n, q in acts]
    try:
        r = fidelity(model, reference)
    finally:
        for h in hooks:
            h.remove()
    return f"| 8, asymmetric [min, amax] (what-if) | 8 | {r.map50_95:.3f} | {r.map50:.3f} | - |"


VARIANTS = [(8, 8), (9, 8), (10, 8), (16, 8), (8, 16)]  # (activation bits, weight bits)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_protocol_args(p)
    p.add_argument("--rules", default="tensorrt")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    print(machine(), flush=True)
    from qdqtorch import QuantConfig, calibrate, quantize_model
    from qdqtorch.data import Preprocess, calibration_loader
    from qdqtorch.eval import EvalSet
    from qdqtorch.eval.fidelity import fidelity, float_reference, outputs_line
    from qdqtorch.models import load_model
    from qdqtorch.rules import apply_placement, placement_from_name

    loaded = load_model(args.model, repo=args.repo)
    pp = Preprocess(imgsz=args.imgsz, stride=loaded.stride)
    eval_set = EvalSet.from_yaml(args.data, "val", pp, num_images=args.num_eval, progress=False)
    reference = float_reference(loaded.model, eval_set, layout=loaded.layout)
    sample = next(eval_set.batches(1))[1]
    print(f"| activation bits | weight bits | fidelity mAP50-95 | mAP50 | output SNR ({args.rules}, {args.imgsz} px, "
          f"{args.num_calib} calib / {len(eval_set)} val) |\n|---|---|---|---|---|", flush=True)
    base = QuantConfig(ignore=list(loaded.default_ignore))
    for act_bits, weight_bits in VARIANTS:
        model = copy.deepcopy(loaded.model)
        config = QuantConfig(ignore=base.ignore, input=base.input.replace(num_bits=act_bits),
                             weight=base.weight.replace(num_bits=weight_bits))
        quantize_model(model, config)
        apply_placement(model, placement_from_name(args.rules), sample)
        calibration = list(calibration_loader(args.data, pp, batch_size=16, num_images=args.num_calib))
        calibrate(model, calibration, method="mse", progress=False)
        r = fidelity(model, reference)
        print(f"| {act_bits} | {weight_bits} | {r.map50_95:.3f} | {r.map50:.3f} | {outputs_line(r.outputs)} |",
              flush=True)
        if (act_bits, weight_bits) == (8, 8):
            usage = grid_use(model, next(eval_set.batches(16))[1])
            print(asymmetric_what_if(model, calibration, reference, fidelity), flush=True)
    print(f"\nint8 grid use at 8/8: {usage}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
