"""Static checks of a Q/DQ ONNX graph (coverage, Q/DQ parameters, scales, precision) and their findings report;
`qdqtorch.export.check_qdq` runs them all."""
