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


def grid_what_ifs(model, calibration, reference, fidelity) -> list:
    """What-ifs, not qdqtorch modes: the same calibrated model with every activation on another 8-bit grid, as table
    rows. A forward hook replaces each activation quantizer's output.

    - asymmetric [observed min, amax]: uint8 with a zero point, as ONNX Runtime's own quantizer does (TensorRT accepts
      only zero points of 0; qdqtorch's shifted grid is the TensorRT-compatible form);
    - per-channel [min_c, max_c] and per-channel symmetric +-max|x_c|: a grid per channel, fitted to the range each
      channel shows on the calibration images. TensorRT quantizes activations per tensor; a per-channel scale would
      need a per-channel multiply before the Q folded into the consumers' weights (SmoothQuant-style), so this row
      says whether that transform is worth building.
    """
    import torch

    from qdqtorch.quantize import named_quantizers, weight_quantizer_ids
    weights = weight_quantizer_ids(model)
    acts = [(n, q) for n, q in named_quantizers(model) if id(q) not in weights and q.amax is not None]
    low: dict = {}
    high: dict = {}

    def key(n, x):  # a tied quantizer sees several tensors: keep their channels apart by channel count
        return n, x.shape[1]

    def observe(n, x) -> None:
        x = x.detach()
        dims = [d for d in range(x.dim()) if d != 1]
        k = key(n, x)
        lo, hi = x.amin(dim=dims), x.amax(dim=dims)
        low[k] = torch.minimum(low[k], lo) if k in low else lo
        high[k] = torch.maximum(high[k], hi) if k in high else hi

    hooks = [q.register_forward_pre_hook(lambda m, a, n=n: observe(n, a[0])) for n, q in acts]
    with torch.no_grad():
        for batch in calibration:
            model(batch[0] if isinstance(batch, (list, tuple)) else batch)
    for h in hooks:
        h.remove()

    def affine(x, lo, hi):
        shape = [1, -1] + [1] * (x.dim() - 2)
        scale = ((hi - lo) / 255).clamp(min=1e-8).view(shape)
        zero_point = torch.round(-lo.view(shape) / scale)
        return (torch.clamp(torch.round(x / scale) + zero_point, 0, 255) - zero_point) * scale

    grids = {
        "8, asymmetric [min, amax]": lambda x, k, q: affine(x, low[k].min().expand_as(low[k]),
                                                            torch.full_like(high[k], float(q.amax.max()))),
        "8, per-channel asymmetric [min_c, max_c]": lambda x, k, q: affine(x, low[k], high[k]),
        "8, per-channel symmetric +-max abs": lambda x, k, q: affine(x, -torch.maximum(high[k], -low[k]),
                                                                     torch.maximum(high[k], -low[k])),
    }
    rows = []
    for label, grid in grids.items():
        hooks = [q.register_forward_hook(lambda m, a, out, n=n, q=q, grid=grid: grid(a[0], key(n, a[0]), q))
                 for n, q in acts]
        try:
            r = fidelity(model, reference)
        finally:
            for h in hooks:
                h.remove()
        rows.append(f"| {label} (what-if) | 8 | {r.map50_95:.3f} | {r.map50:.3f} | - |")
    return rows


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
            for row in grid_what_ifs(model, calibration, reference, fidelity):
                print(row, flush=True)
    print(f"\nint8 grid use at 8/8: {usage}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
