"""recover_weights: after calibration, re-round every quantized layer's weights (and correct its bias) so that its
output under quantization matches the float model's, layer after layer, without labels.

One forward pass carries two copies of the calibration images through the model at once: the first half sees the
float model (every activation quantizer passes it unchanged, weighted layers compute it with their float weights),
the second half sees the quantized model. When a layer is reached, its float and quantized inputs give the
quadratic form of its output error; a solver (qdqtorch.recovery.rounding) picks the integer codes, the layer's
weights become ``scale * codes`` and the pass continues, so each layer is fitted to the quantized model's own inputs
with every layer before it already recovered (AdaRound's and QDrop's setting).
"""
from __future__ import annotations

import math
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Iterable, Iterator, List, Mapping, Optional, Tuple, Union

import torch
from torch import nn
from tqdm.auto import tqdm

from ..errors import QdqtorchError, UsageError
from ..nn import TensorQuantizer
from ..quantize import (disable_quantization, model_device, named_quantizers, uncalibrated_quantizers,
                        weight_quantizer_ids)
from .layers import groups_of, input_rows, scale_and_bounds, skip_reason, weight_rows, weighted_quant_layers
from .rounding import ROUNDINGS, Problem, solve


class RecoveryError(QdqtorchError, RuntimeError):
    """Recovery could not run on this model or data; the message says why and what to do."""


@dataclass
class LayerRecovery:
    """One layer's relative output error (error energy / float output energy) before and after recovery."""

    name: str
    error_nearest: float
    error_recovered: float
    changed: float            # fraction of weight codes that differ from round-to-nearest
    bias_added: bool = False

    def to_dict(self) -> dict:
        return dict(self.__dict__)


@dataclass
class RecoveryReport:
    """What recover_weights did: per-layer errors, skipped layers and why, settings, seconds."""

    method: str
    bias_correction: bool
    images: int
    layers: List[LayerRecovery] = field(default_factory=list)
    skipped: List[Tuple[str, str]] = field(default_factory=list)
    seconds: float = 0.0

    def to_dict(self) -> dict:
        """JSON-able dict."""
        return {"method": self.method, "bias_correction": self.bias_correction, "images": self.images,
                "seconds": self.seconds, "layers": [layer.to_dict() for layer in self.layers],
                "skipped": [list(s) for s in self.skipped]}

    def __str__(self) -> str:
        if not self.layers:
            return f"recovery ({self.method}): no layer recovered"
        before = sum(layer.error_nearest for layer in self.layers) / len(self.layers)
        after = sum(layer.error_recovered for layer in self.layers) / len(self.layers)
        return (f"recovery ({self.method}{', bias correction' if self.bias_correction else ''}): "
                f"{len(self.layers)} layers on {self.images} images in {self.seconds:.1f}s, mean relative output "
                f"error {before:.3g} -> {after:.3g}" + (f"; {len(self.skipped)} skipped" if self.skipped else ""))


def _first_input(batch: Any, who: str, preprocess: Optional[Callable[[Any], Any]]) -> torch.Tensor:
    if preprocess is not None:
        batch = preprocess(batch)
    if isinstance(batch, torch.Tensor):
        return batch
    if isinstance(batch, (list, tuple)) and batch and isinstance(batch[0], torch.Tensor):
        return batch[0]
    shown = f"a dict with keys {sorted(map(str, batch))[:6]}" if isinstance(batch, Mapping) else type(batch).__name__
    what = "preprocess(batch) must return" if preprocess is not None else "batches must be"
    raise RecoveryError(f"{who}: {what} an image tensor or a tuple whose first item is one, got {shown}; pass "
                        "preprocess= to map a batch to the model's input (e.g. lambda b: b['img'].float() / 255 "
                        "for an Ultralytics loader)")


def gather_images(data: Iterable, num_images: int, device: Union[str, torch.device], *,
                  who: str = "recover_weights", preprocess: Optional[Callable[[Any], Any]] = None) -> torch.Tensor:
    """The first `num_images` inputs of `data` (tensors, or tuples whose first item is the input; any batch once
    mapped by `preprocess`) as one tensor on `device`: the images a recovery method fits on. `who` names the caller
    in errors."""
    images: List[torch.Tensor] = []
    count = 0
    for batch in data:
        x = _first_input(batch, who, preprocess)
        images.append(x[:num_images - count].to(device))
        count += images[-1].shape[0]
        if count >= num_images:
            break
    if not images:
        raise RecoveryError(f"{who}: the data yielded no batch; check the calibration images")
    return torch.cat(images)


@contextmanager
def _swapped(module: nn.Module, weight: torch.Tensor, bias: Optional[torch.Tensor]) -> Iterator[None]:
    """Temporarily give a layer other weight/bias values (in place of .data, so parameters keep their identity)."""
    saved_w = module.weight.data
    saved_b = module.bias.data if module.bias is not None else None
    module.weight.data = weight
    if module.bias is not None and bias is not None:
        module.bias.data = bias
    try:
        yield
    finally:
        module.weight.data = saved_w
        if saved_b is not None:
            module.bias.data = saved_b


class _Stats:
    """Running moments of one layer group's quantized rows q and float rows f: E[q q^T], E[q f^T], E[q], E[f], and
    of the float output y = f W^T: E[y], E[y^2] per output row."""

    def __init__(self, d: int, rows: int, device: torch.device) -> None:
        z = dict(dtype=torch.float64, device=device)
        self.qq = torch.zeros(d, d, **z)
        self.qf = torch.zeros(d, d, **z)
        self.mq = torch.zeros(d, **z)
        self.mf = torch.zeros(d, **z)
        self.my = torch.zeros(rows, **z)
        self.yy = torch.zeros(rows, **z)
        self.count = 0

    def add(self, q: torch.Tensor, f: torch.Tensor, w: torch.Tensor) -> None:
        q, f = q.float(), f.float()
        self.qq += (q.T @ q).double()
        self.qf += (q.T @ f).double()
        self.mq += q.sum(0).double()
        self.mf += f.sum(0).double()
        y = f @ w.float().T
        self.my += y.sum(0).double()
        self.yy += y.pow(2).sum(0).double()
        self.count += q.shape[0]


class _Recovery:
    """Hooks and state of one recovery pass (see the module docstring)."""

    def __init__(self, model: nn.Module, n: int, method: str, bias_correction: bool, max_rows: int,
                 solver_kwargs: Dict[str, Any], bar: Any, seed: int) -> None:
        self.model, self.n, self.method = model, n, method
        self.bias_correction, self.max_rows, self.bar = bias_correction, max_rows, bar
        self.solver_kwargs = solver_kwargs
        self.generator = torch.Generator().manual_seed(seed)
        self.float_params: Dict[nn.Module, Tuple[torch.Tensor, Optional[torch.Tensor]]] = {}
        self.added_bias: List[nn.Module] = []
        self.done: set = set()
        self.results: List[LayerRecovery] = []
        self.names: Dict[nn.Module, str] = {}

    # ---- float half / quantized half ---------------------------------------------------------------------------
    def activation_hook(self, quantizer: TensorQuantizer, args: tuple, output: Any) -> Any:
        if not quantizer.is_enabled or not isinstance(output, torch.Tensor):
            return None
        x = args[0]
        if output.dim() == 0 or output.shape[0] != 2 * self.n:
            raise RecoveryError(f"recover_weights: quantizer {quantizer.label} saw a tensor of shape "
                                f"{tuple(output.shape)}; recovery needs activations whose first dimension is the "
                                "batch")
        return torch.cat([x[:self.n], output[self.n:]])

    def float_output_hook(self, module: nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor:
        """Recompute the float half of a weighted layer's output with float weights and no quantization."""
        x = args[0]
        weight, bias = self.float_params.get(module, (module.weight.data, None))
        with disable_quantization(module), _swapped(module, weight, bias):
            out_f = module.forward(x[:self.n])
        return torch.cat([out_f, output[self.n:]])

    # ---- one layer ------------------------------------------------------------------------------------------------
    def layer_hook(self, module: nn.Module, args: tuple) -> None:
        if module in self.done:
            return None
        self.done.add(module)
        name = self.names[module]
        x = args[0]
        xf = x[:self.n]
        xq = module._input_quantizer(x)[self.n:]
        scale, lo, hi = scale_and_bounds(module)
        w_float = module.weight.detach().clone()
        b_float = module.bias.detach().clone() if module.bias is not None else None
        g = groups_of(module)
        per = module.weight.shape[0] // g
        new_w = torch.empty_like(w_float)
        # round-to-nearest exactly as fake quant does it (float32 arithmetic, ties included)
        rows_shape = (-1, *[1] * (w_float.dim() - 1))
        nearest = torch.round(module._weight_quantizer(module.weight.detach()) / scale.view(rows_shape))
        new_b = torch.zeros(module.weight.shape[0], dtype=w_float.dtype, device=w_float.device)
        err_before = err_after = energy = changed = 0.0
        for group in range(g):
            st = self._stats(module, xq, xf, group)
            rows = slice(group * per, (group + 1) * per)
            wf = weight_rows(module, group).double()
            s = scale[rows].double()
            hess, cross = st.qq / st.count, st.qf / st.count
            mq, mf = st.mq / st.count, st.mf / st.count
            const = st.yy / st.count
            if self.bias_correction:   # a free bias absorbs the mean error: fit the centred problem
                hess = hess - torch.outer(mq, mq)
                cross = cross - torch.outer(mq, mf)
                const = const - (st.my / st.count).pow(2)
            problem = Problem(wf, s, lo, hi, hess, wf @ cross.T)
            near = nearest[rows].reshape(per, -1).double()
            if self.method == "nearest":
                codes = near
            elif self.method == "adaround":
                p32 = Problem(*(t.float() if isinstance(t, torch.Tensor) else t for t in
                                (problem.weight, problem.scale, lo, hi, problem.hessian, problem.target)))
                codes = solve(p32, "adaround", **self.solver_kwargs).double()
            else:
                codes = solve(problem, self.method, **self.solver_kwargs)
            # a row keeps round-to-nearest where the solver did not beat it (never worse than plain PTQ)
            worse = problem.loss(codes) > problem.loss(near)
            codes = torch.where(worse[:, None], near, codes)
            err_before += float((problem.loss(near) + const).sum())
            err_after += float((problem.loss(codes) + const).sum())
            energy += float((st.yy / st.count).sum())
            changed += float((codes != near).sum())
            w_new = codes.to(w_float.dtype) * scale[rows].to(w_float.dtype)[:, None]
            new_w[rows] = w_new.reshape(new_w[rows].shape)
            if self.bias_correction:
                shift = wf @ mf - w_new.double() @ mq
                new_b[rows] = shift.to(new_b.dtype)
        self.float_params[module] = (w_float, b_float if b_float is not None else None)
        module.weight.data.copy_(new_w)
        if self.bias_correction:
            if module.bias is None:
                module.bias = nn.Parameter(new_b, requires_grad=module.weight.requires_grad)
                self.added_bias.append(module)
                self.float_params[module] = (w_float, torch.zeros_like(new_b))
            else:
                module.bias.data.add_(new_b)
        self.results.append(LayerRecovery(name, err_before / max(energy, 1e-30), err_after / max(energy, 1e-30),
                                          changed / w_float.numel(), module in self.added_bias))
        self.bar.set_postfix_str(name[-30:])
        self.bar.update(1)
        return None

    def _stats(self, module: nn.Module, xq: torch.Tensor, xf: torch.Tensor, group: int) -> _Stats:
        w = weight_rows(module, group)
        st = _Stats(w.shape[1], w.shape[0], xq.device)
        per_image = None
        for i in range(xq.shape[0]):
            rq = input_rows(module, xq[i:i + 1], group)
            rf = input_rows(module, xf[i:i + 1], group)
            if per_image is None:
                per_image = max(1, math.ceil(self.max_rows / xq.shape[0]))
            if rq.shape[0] > per_image:
                keep = torch.randperm(rq.shape[0], generator=self.generator)[:per_image].to(rq.device)
                rq, rf = rq[keep], rf[keep]
            st.add(rq, rf, w)
        return st

    def restore(self) -> None:
        """Put back the float weights/biases of every layer touched (on error or interrupt)."""
        for module, (w, b) in self.float_params.items():
            module.weight.data.copy_(w)
            if module in self.added_bias:
                del module.bias
                module.bias = None
            elif b is not None:
                module.bias.data.copy_(b)


@torch.no_grad()
def recover_weights(model: nn.Module, data: Iterable, *, method: str = "adaround", bias_correction: bool = False,
                    num_images: int = 32, max_rows: int = 16384, device: Union[str, torch.device, None] = None,
                    progress: bool = True, seed: int = 0, preprocess: Optional[Callable[[Any], Any]] = None,
                    **solver_kwargs: Any) -> RecoveryReport:
    """Re-round the weights of every quantized Conv/Linear of a calibrated model, layer by layer, to minimise its
    output error against the float model on `num_images` images from `data` (label-free), and with
    `bias_correction` shift each layer's bias to cancel its mean output error (a layer without bias gets one).

    `method`: "adaround" (learned up/down rounding), "gptq" (error-feedback rounding of the least-squares optimum)
    or "nearest" (plain rounding; with bias correction alone). Weights end up exactly ``scale * integer code`` with
    the calibrated weight amax, so fake quant, the exported Q/DQ ONNX and a saved calibration reproduce them.
    Activation quantizers (tied or not) are untouched; layers whose weight quantizer is disabled (ignored) keep
    their weights. `max_rows` caps the input positions sampled per layer. On any error or Ctrl-C the model is
    restored as it was. `preprocess` maps a batch to the image tensor (as in `gather_images`). solver_kwargs go to the
    rounding (e.g. iters=, lr=, reg= for adaround).
    """
    if method not in ROUNDINGS:
        raise UsageError(f"recover_weights: unknown method {method!r}; choose one of {ROUNDINGS}")
    start = time.perf_counter()
    device = torch.device(device) if device is not None else model_device(model)
    missing = uncalibrated_quantizers(model)
    if missing:
        raise RecoveryError(f"recover_weights: {len(missing)} enabled quantizer(s) have no amax ({missing[:5]}); "
                            "calibrate the model (qdqtorch.calibrate) first")
    images = gather_images(data, num_images, device, preprocess=preprocess)
    n = images.shape[0]
    layers = weighted_quant_layers(model)
    todo = [(name, m) for name, m in layers if skip_reason(m) is None]
    report = RecoveryReport(method, bias_correction, n)
    report.skipped = [(name, skip_reason(m)) for name, m in layers if skip_reason(m) is not None]
    if not todo:
        raise RecoveryError("recover_weights: the model has no quantized Conv/Linear layer to recover; run "
                            "qdqtorch.quantize_model and calibrate first")
    weights = weight_quantizer_ids(model)
    bar = tqdm(total=len(todo), desc=f"recovery ({method})", unit="layer", disable=not progress)
    state = _Recovery(model, n, method, bias_correction, max_rows, solver_kwargs, bar, seed)
    state.names = {m: name for name, m in todo}
    was_training = model.training
    handles = []
    try:
        for _, q in named_quantizers(model):
            if id(q) not in weights:
                handles.append(q.register_forward_hook(state.activation_hook))
        for _, m in layers:
            handles.append(m.register_forward_hook(state.float_output_hook))
        for _, m in todo:
            handles.append(m.register_forward_pre_hook(state.layer_hook))
        model.eval()
        model(torch.cat([images, images]))
    except BaseException:
        state.restore()
        raise
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
        bar.close()
    report.layers = state.results
    report.skipped += [(name, "not reached by the forward pass") for name, m in todo if m not in state.done]
    report.seconds = time.perf_counter() - start
    return report
