"""Fake-quant numerics against an independent float64 reference, STE and learned-amax gradients."""
import numpy as np
import pytest
import torch

from qdqtorch import QuantDescriptor, TensorQuantizer
from qdqtorch.tensor_quant import fake_tensor_quant, learnable_fake_tensor_quant, tensor_quant


def reference_fake_quant(x: np.ndarray, amax: np.ndarray, bits: int, unsigned: bool, narrow: bool, axis):
    """float64 formula: scale = amax / max_code, codes = clip(round_half_even(x / scale))."""
    x = x.astype(np.float64)
    max_code = 2 ** bits - 1 if unsigned else 2 ** (bits - 1) - 1
    min_code = 0 if unsigned else (-max_code if narrow else -max_code - 1)
    amax = np.asarray(amax, dtype=np.float64)
    if axis is not None:
        shape = [1] * x.ndim
        shape[axis] = -1
        amax = amax.reshape(shape)
    scale = amax / max_code
    return np.clip(np.round(x / scale), min_code, max_code) * scale, scale


@pytest.mark.parametrize("bits", [2, 4, 8, 12, 16])
@pytest.mark.parametrize("unsigned,narrow", [(False, True), (False, False), (True, True)])
def test_per_tensor_matches_float64_reference(bits, unsigned, narrow):
    torch.manual_seed(bits)
    x = torch.randn(64, 33) * 3
    amax = torch.tensor(2.5)
    out = fake_tensor_quant(x, amax, bits, unsigned, narrow).double().numpy()
    ref, scale = reference_fake_quant(x.numpy(), amax.numpy(), bits, unsigned, narrow, None)
    # float32 kernels may round a value lying within float32 epsilon of a .5 tie the other way: at most 1 code
    diff = np.abs(out - ref)
    assert diff.max() <= scale * 1.0001 + 1e-6
    assert (diff > 1e-5).mean() < 1e-3
    if unsigned:
        assert out.min() >= 0
    max_code = 2 ** bits - 1 if unsigned else 2 ** (bits - 1) - 1
    reach = max_code if narrow or unsigned else max_code + 1
    assert np.abs(out).max() <= 2.5 * reach / max_code * (1 + 1e-6)


@pytest.mark.parametrize("axis", [0, 1, 2, -1])
def test_per_channel_on_several_axes(axis):
    torch.manual_seed(0)
    x = torch.randn(4, 5, 6, 7)
    amax = torch.rand(x.shape[axis]) + 0.2
    out = fake_tensor_quant(x, amax, 8, axis=axis).double().numpy()
    ref, scale = reference_fake_quant(x.numpy(), amax.numpy(), 8, False, True, axis % 4)
    assert np.abs(out - ref).max() <= np.max(scale) * 1.0001
    assert (np.abs(out - ref) > 1e-6).mean() < 1e-3
    # each channel clipped at its own amax
    moved = np.moveaxis(out, axis % 4, 0).reshape(x.shape[axis], -1)
    assert np.all(np.abs(moved).max(axis=1) <= amax.numpy() * (1 + 1e-6))


def test_real_quantization_gives_integer_codes():
    x = torch.linspace(-3, 3, 101)
    codes, scale = tensor_quant(x, torch.tensor(2.0), 8)
    assert torch.equal(codes, codes.round())
    assert codes.max() == 127 and codes.min() == -127
    assert torch.allclose(codes * scale, fake_tensor_quant(x, torch.tensor(2.0), 8), atol=1e-6)


def test_ste_gradient_is_clipped_outside_amax():
    x = torch.tensor([-5.0, -1.0, 0.3, 1.9, 2.0, 3.0], requires_grad=True)
    fake_tensor_quant(x, torch.tensor(2.0)).sum().backward()
    assert x.grad.tolist() == [0.0, 1.0, 1.0, 1.0, 1.0, 0.0]


def test_learned_amax_gradient_matches_formula_and_finite_difference():
    torch.manual_seed(1)
    x = torch.randn(1000, dtype=torch.float64) * 2
    amax = torch.tensor(1.5, dtype=torch.float64, requires_grad=True)
    learnable_fake_tensor_quant(x, amax, 8).sum().backward()
    scale = 1.5 / 127
    codes = torch.clamp(torch.round(x / scale), -127, 127)
    inside = (x / scale).abs() <= 127
    expected = torch.where(inside, codes - x / scale, codes).sum() / 127
    assert torch.allclose(amax.grad, expected, rtol=1e-9)
    # the loss "pull outputs towards x" prefers a larger amax when many values are clipped
    amax2 = torch.tensor(0.5, dtype=torch.float64, requires_grad=True)
    loss = ((learnable_fake_tensor_quant(x, amax2, 8) - x) ** 2).mean()
    loss.backward()
    assert amax2.grad < 0


def test_dead_channels_never_give_nan_or_zero_scale():
    w = torch.randn(4, 3, 3, 3)
    w[1] = 0
    q = TensorQuantizer(QuantDescriptor(axis=0))
    q.amax = w.abs().amax(dim=(1, 2, 3))
    out = q(w)
    assert torch.isfinite(out).all()
    assert torch.equal(out[1], torch.zeros_like(out[1]))
    codes, scale = tensor_quant(w, q.amax, 8, axis=0)
    assert (scale > 0).all() and torch.isfinite(scale).all()


def test_half_input_keeps_dtype():
    q = TensorQuantizer(QuantDescriptor(amax=1.0))
    x = torch.randn(10).half()
    out = q(x)
    assert out.dtype == torch.float16
    assert torch.allclose(out.float(), fake_tensor_quant(x.float(), torch.tensor(1.0)), atol=1e-3)


@pytest.mark.parametrize("bits,unsigned,narrow",
                         [(8, False, True), (8, False, False), (8, True, True), (4, False, True)])
def test_cpu_inference_path_is_bit_identical_to_torch_kernel(bits, unsigned, narrow):
    """Under no_grad on CPU fake_tensor_quant skips torch's fused kernel; its values must not change by one bit,
    including exact .5 ties, values beyond amax, and many scales."""
    from qdqtorch.tensor_quant import quant_bounds
    torch.manual_seed(bits)
    lo, hi = quant_bounds(bits, unsigned, narrow)
    for amax in [1e-6, 0.013, 0.7, 1.0, 2.5, 3.3, 117.0, 4e4]:
        scale = torch.tensor(amax, dtype=torch.float32) / hi
        ties = (torch.arange(-2 * hi - 3, 2 * hi + 3, dtype=torch.float32) / 2) * scale
        x = torch.cat([torch.randn(5000) * amax * 1.5, ties, torch.tensor([0.0, -0.0, amax, -amax])])
        expected = torch.fake_quantize_per_tensor_affine(x, scale, torch.zeros((), dtype=torch.int32), lo, hi)
        with torch.no_grad():
            out = fake_tensor_quant(x, torch.tensor(amax), bits, unsigned, narrow)
        assert torch.equal(out, expected), f"amax {amax}: {(out != expected).sum()} values differ"
    y = torch.randn(100, requires_grad=True)  # autograd keeps the fused kernel and its straight-through mask
    assert fake_tensor_quant(y, torch.tensor(1.0)).grad_fn is not None
