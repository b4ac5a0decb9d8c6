#!/usr/bin/env python
"""INT8 Linear layers in a small transformer encoder: quantize, calibrate, export a Q/DQ ONNX with a dynamic sequence
length, and compare the embeddings with the float model's (cosine), in PyTorch fake quant and in ONNX Runtime.

    python examples/transformer_encoder.py --out runs/transformer

The encoder (random init, no download) maps (batch, sequence, 16) features to one 32-d embedding per sample; all
its nn.Linear layers (input projection, q/k/v/o attention projections, feed-forward, head) become INT8. Its
scaled_dot_product_attention needs ONNX opset 14: export_onnx picks that itself and says so.

Why not torch.nn.TransformerEncoder: its nn.MultiheadAttention calls the q/k/v/out projections functionally (not as
modules), so they cannot be quantized by swapping modules; in eval mode without autograd its layers take a fused
fast path that bypasses linear1/linear2 too (calibrate then reports their quantizers as never reached); and its
traced ONNX export bakes the sample's sequence length into reshapes.
"""
from __future__ import annotations

import argparse
import copy
import json
import sys
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

import torch  # noqa: E402
from torch import nn  # noqa: E402

FEATURES, WIDTH, EMBED = 16, 64, 32


class EncoderLayer(nn.Module):
    """Post-norm transformer encoder layer whose four attention projections and two feed-forward layers are
    nn.Linear modules, so quantize_model makes all six INT8. Attention is F.scaled_dot_product_attention."""

    def __init__(self, width: int = WIDTH, heads: int = 4) -> None:
        super().__init__()
        self.heads = heads
        self.q, self.k, self.v, self.o = (nn.Linear(width, width) for _ in range(4))
        self.ff1, self.ff2 = nn.Linear(width, 2 * width), nn.Linear(2 * width, width)
        self.norm1, self.norm2 = nn.LayerNorm(width), nn.LayerNorm(width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, s, w = x.shape  # traced as sizes: batch and sequence stay symbolic in the ONNX graph

        def split(t: torch.Tensor) -> torch.Tensor:
            return t.reshape(b, s, self.heads, w // self.heads).transpose(1, 2)

        attn = nn.functional.scaled_dot_product_attention(split(self.q(x)), split(self.k(x)), split(self.v(x)))
        x = self.norm1(x + self.o(attn.transpose(1, 2).reshape(b, s, w)))
        return self.norm2(x + self.ff2(nn.functional.gelu(self.ff1(x))))


class TinyEncoder(nn.Module):
    """Linear input projection, two encoder layers, mean pooling and a Linear head."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Linear(FEATURES, WIDTH)
        self.layers = nn.Sequential(EncoderLayer(), EncoderLayer())
        self.head = nn.Linear(WIDTH, EMBED)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.layers(self.embed(x)).mean(dim=1))


def _cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    """Mean over samples of the cosine similarity of two embedding batches."""
    return float(nn.functional.cosine_similarity(a.double(), b.double(), dim=1).mean())


def run(out: Path, seq_len: int = 24, eval_seq_len: int = 40, calib_batches: int = 8, seed: int = 0) -> dict:
    """Quantize, calibrate, export and measure; return the figures (also written to out/summary.json)."""
    import qdqtorch
    from qdqtorch.export import export_onnx, onnx_opset
    from qdqtorch.export.runtime import OnnxRuntimeModule

    torch.manual_seed(seed)
    model = TinyEncoder().eval()
    reference = copy.deepcopy(model)
    report = qdqtorch.quantize_model(model)
    calib = [torch.randn(16, seq_len, FEATURES) for _ in range(calib_batches)]
    qdqtorch.calibrate(model, calib, method="mse", progress=False)

    out.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        path = export_onnx(model, calib[0][:1], out / "encoder.qdq.onnx", input_names=("features",),
                           output_names=("embedding",), dynamic_axes={"features": {1: "sequence"}})
    notes = [str(w.message) for w in caught if "opset" in str(w.message)]

    x = torch.randn(32, eval_seq_len, FEATURES)  # another sequence length than the export sample's
    with torch.no_grad():
        float_out, int8_out = reference(x), model(x)
    ort_out = OnnxRuntimeModule(path)(x)
    summary = {"quantized_layers": [name for name, _, _ in report.replaced],
               "opset": onnx_opset(path), "export_notes": notes, "eval_sequence_length": eval_seq_len,
               "cosine_fake_quant_vs_float": _cosine(int8_out, float_out),
               "cosine_onnxruntime_vs_float": _cosine(ort_out, float_out),
               "cosine_onnxruntime_vs_fake_quant": _cosine(ort_out, int8_out), "onnx": str(path)}
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=Path("runs/transformer"), help="output folder")
    p.add_argument("--seq-len", type=int, default=24, help="sequence length of the calibration inputs")
    p.add_argument("--eval-seq-len", type=int, default=40, help="sequence length of the comparison inputs")
    args = p.parse_args(argv)
    summary = run(args.out, args.seq_len, args.eval_seq_len)
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
