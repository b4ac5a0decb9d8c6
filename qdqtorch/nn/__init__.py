"""Quantized module twins and the TensorQuantizer they hold."""
from torch import nn

from .quant_conv import (QuantConv1d, QuantConv2d, QuantConv3d, QuantConvTranspose1d, QuantConvTranspose2d,
                         QuantConvTranspose3d)
from .quant_linear import QuantLinear
from .quant_ops import QuantAdd, QuantConcat
from .quant_pooling import (QuantAdaptiveAvgPool1d, QuantAdaptiveAvgPool2d, QuantAdaptiveAvgPool3d, QuantAvgPool1d,
                            QuantAvgPool2d, QuantAvgPool3d, QuantMaxPool1d, QuantMaxPool2d, QuantMaxPool3d)
from .tensor_quantizer import (GRIDS, CalibrationError, QuantizerMode, QuantizerSnapshot, TensorQuantizer,
                               preserve_quantizer_state)

QUANT_TWINS = {
    nn.Conv1d: QuantConv1d, nn.Conv2d: QuantConv2d, nn.Conv3d: QuantConv3d,
    nn.ConvTranspose1d: QuantConvTranspose1d, nn.ConvTranspose2d: QuantConvTranspose2d,
    nn.ConvTranspose3d: QuantConvTranspose3d, nn.Linear: QuantLinear,
    nn.MaxPool1d: QuantMaxPool1d, nn.MaxPool2d: QuantMaxPool2d, nn.MaxPool3d: QuantMaxPool3d,
    nn.AvgPool1d: QuantAvgPool1d, nn.AvgPool2d: QuantAvgPool2d, nn.AvgPool3d: QuantAvgPool3d,
    nn.AdaptiveAvgPool1d: QuantAdaptiveAvgPool1d, nn.AdaptiveAvgPool2d: QuantAdaptiveAvgPool2d,
    nn.AdaptiveAvgPool3d: QuantAdaptiveAvgPool3d,
}
"""Float module class -> quantized twin class (each twin has `from_float`)."""

WEIGHTED_TYPES = ("Conv1d", "Conv2d", "Conv3d", "ConvTranspose1d", "ConvTranspose2d", "ConvTranspose3d", "Linear")
POOLING_TYPES = ("MaxPool1d", "MaxPool2d", "MaxPool3d", "AvgPool1d", "AvgPool2d", "AvgPool3d",
                 "AdaptiveAvgPool1d", "AdaptiveAvgPool2d", "AdaptiveAvgPool3d")

__all__ = ["TensorQuantizer", "CalibrationError", "GRIDS", "QuantizerMode", "QuantizerSnapshot",
           "preserve_quantizer_state", "QUANT_TWINS", "WEIGHTED_TYPES", "POOLING_TYPES",
           "QuantConv1d", "QuantConv2d", "QuantConv3d", "QuantConvTranspose1d", "QuantConvTranspose2d",
           "QuantConvTranspose3d", "QuantLinear", "QuantAdd", "QuantConcat",
           "QuantMaxPool1d", "QuantMaxPool2d", "QuantMaxPool3d", "QuantAvgPool1d", "QuantAvgPool2d",
           "QuantAvgPool3d", "QuantAdaptiveAvgPool1d", "QuantAdaptiveAvgPool2d", "QuantAdaptiveAvgPool3d"]
