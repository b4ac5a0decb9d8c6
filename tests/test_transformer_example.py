"""examples/transformer_encoder.py: a transformer encoder's Linear layers in INT8, exported at the opset its attention
needs with a symbolic sequence axis, embeddings close to float's in PyTorch and in ONNX Runtime."""
from __future__ import annotations

import importlib.util

import onnx
import pytest
import torch

from conftest import REPO_ROOT
from qdqtorch.export import export_onnx
from qdqtorch.export.onnx_export import ExportError


def _example():
    path = REPO_ROOT / "examples" / "transformer_encoder.py"
    spec = importlib.util.spec_from_file_location("transformer_encoder", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_example_quantizes_exports_with_dynamic_sequence_and_keeps_the_embeddings(tmp_path):
    summary = _example().run(tmp_path, seq_len=12, eval_seq_len=20, calib_batches=2)
    assert len(summary["quantized_layers"]) == 14  # embed, 2 x (q, k, v, o, ff1, ff2), head
    assert summary["opset"] == 14 and "scaled_dot_product_attention" in summary["export_notes"][0]
    dims = onnx.load(summary["onnx"]).graph.input[0].type.tensor_type.shape.dim
    assert [d.dim_param or d.dim_value for d in dims] == ["batch", "sequence", 16]
    # evaluated at another sequence length than the export sample's: the axis really is symbolic
    assert summary["cosine_fake_quant_vs_float"] > 0.999
    assert summary["cosine_onnxruntime_vs_float"] > 0.999
    assert summary["cosine_onnxruntime_vs_fake_quant"] > 0.9999


def test_too_low_explicit_opset_is_one_clear_error(tmp_path):
    example = _example()
    model = example.EncoderLayer().eval()
    with pytest.raises(ExportError, match=r"scaled_dot_product_attention.*only from opset 14.*opset 13 was requested"):
        export_onnx(model, torch.randn(1, 5, example.WIDTH), tmp_path / "x.onnx", opset=13, input_names=("x",))
