"""Which traced torch functions are concats, scale-preserving ops, residual adds, weighted ops or fusable pointwise
ops (names as `func.__name__` seen by a TorchFunctionMode)."""
from __future__ import annotations

CONCAT = frozenset({"cat", "concat", "concatenate"})

# Ops whose output values are input values (moved, selected, max-ed, repeated or nearest-resized): TensorRT runs them
# in int8 on the input's scale, so input and output must share one amax. Data is always input 0.
MAXPOOL = frozenset({"max_pool1d", "max_pool2d", "max_pool3d", "max_pool1d_with_indices", "max_pool2d_with_indices",
                     "max_pool3d_with_indices", "adaptive_max_pool1d", "adaptive_max_pool2d", "adaptive_max_pool3d"})
RESIZE = frozenset({"interpolate", "upsample", "upsample_nearest", "upsample_bilinear", "pixel_shuffle",
                    "pixel_unshuffle"})
RESHAPE = frozenset({"view", "reshape", "flatten", "unflatten", "permute", "transpose", "contiguous", "squeeze",
                     "unsqueeze", "__getitem__", "chunk", "split", "tensor_split", "unbind", "narrow", "clone",
                     "detach", "expand", "expand_as", "repeat", "view_as", "reshape_as", "movedim", "pad",
                     "flip", "roll"})
SCALE_PRESERVING = MAXPOOL | RESIZE | RESHAPE

ADD = frozenset({"add", "__add__", "__radd__", "add_", "__iadd__"})

WEIGHTED = frozenset({"conv1d", "conv2d", "conv3d", "conv_transpose1d", "conv_transpose2d", "conv_transpose3d",
                      "linear"})

# Products of two tensors: with two activations (attention's Q K^T and softmax V) they have no module, hence no
# quantizer; the rules keep them float and say so.
MATMUL = frozenset({"matmul", "__matmul__", "__rmatmul__", "bmm", "baddbmm", "einsum", "scaled_dot_product_attention"})

# Pointwise ops TensorRT fuses into the preceding conv (BN, activations, SiLU written as x * sigmoid(x)).
FUSABLE_POINTWISE = frozenset({"batch_norm", "silu", "silu_", "relu", "relu_", "relu6", "leaky_relu", "leaky_relu_",
                               "hardswish", "hardswish_", "hardsigmoid", "sigmoid", "sigmoid_", "tanh", "gelu",
                               "elu", "mish", "hardtanh", "clamp", "clip", "mul", "__mul__", "mul_"})


def category(target: str) -> str:
    """Report label of a scale-preserving or concat op."""
    if target in CONCAT:
        return "concat"
    if target in MAXPOOL:
        return "maxpool"
    if target in RESIZE:
        return "resize"
    return "reshape"
