"""qdqtorch: fake-quantization (Q/DQ) for PyTorch models deployed as INT8 on TensorRT."""
__version__ = "0.1.0"
