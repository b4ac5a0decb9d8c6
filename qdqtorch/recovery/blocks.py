"""reconstruct_blocks: after calibration, fit each top-level block of the network to the float model's block output,
learning the weight rounding of its quantized layers (AdaRound-style soft rounding) and the step sizes of its
activation quantizers (LSQ-style) together, without labels (block reconstruction, as in BRECQ / QDrop).

Block after block, in forward order: the block's input is captured from the quantized model (every block before it
already reconstructed), its target is the float model's output of the same block on the same images. While a block
is trained, each of its activation quantizers is skipped per element with probability `drop` (QDrop, Wei et al.
2022), which flattens the loss landscape and keeps a few calibration images from being overfitted. At the end of a
block the rounding is made hard: weights become ``scale * integer code`` with the calibrated weight amax, learned
activation amax values land in the quantizers through their public `amax` setter, so fake quant, the exported Q/DQ
ONNX and a saved calibration reproduce the result.

Tied quantizers are one object shared by several sites: such a quantizer is learned in the first block that uses
it and kept fixed afterwards (so blocks already fitted are not changed behind their back), and its sites stay tied.
Disabled (ignored) quantizers and layers whose weight quantizer is disabled are left alone. A block whose hard
result is worse than plain rounding on its images is put back as calibrated.
"""
from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence, Tuple, Union

import torch
from torch import nn
from tqdm.auto import tqdm

from ..nn import TensorQuantizer
from ..quantize import disable_quantization, named_quantizers, uncalibrated_quantizers, weight_quantizer_ids
from ..tensor_quant import learnable_fake_tensor_quant
from .layers import scale_and_bounds, skip_reason
from .ranges import _leaves, _output_error
from .recover import RecoveryError, gather_images
from .rounding import GAMMA, ZETA


@dataclass
class BlockResult:
    """One block's relative output error (error energy / float energy, on the recovery images) before and after."""

    name: str
    error_before: float
    error_after: float
    layers: int
    quantizers: int
    kept: bool = True      # False: the result was worse than plain rounding, the block was put back

    def to_dict(self) -> dict:
        return dict(self.__dict__)


@dataclass
class BlockReport:
    """What reconstruct_blocks did: per-block errors, settings, seconds."""

    images: int
    iters: int
    drop: float
    blocks: List[BlockResult] = field(default_factory=list)
    seconds: float = 0.0

    def to_dict(self) -> dict:
        """JSON-able dict."""
        return {"images": self.images, "iters": self.iters, "drop": self.drop, "seconds": self.seconds,
                "blocks": [b.to_dict() for b in self.blocks]}

    def __str__(self) -> str:
        if not self.blocks:
            return "block reconstruction: no block"
        kept = [b for b in self.blocks if b.kept]
        before = sum(b.error_before for b in self.blocks) / len(self.blocks)
        after = sum(b.error_after for b in self.blocks) / len(self.blocks)
        return (f"block reconstruction: {len(self.blocks)} blocks ({len(kept)} kept) on {self.images} images, "
                f"{self.iters} steps each, drop {self.drop}, in {self.seconds:.1f}s; mean relative block output "
                f"error {before:.3g} -> {after:.3g}")


class _Stop(Exception):
    """Raised by a capture hook to end a forward pass once the block of interest has been reached."""


def default_blocks(model: nn.Module) -> List[Tuple[str, nn.Module]]:
    """The top-level blocks of a network: the children of the first Sequential/ModuleList (breadth first, the model
    itself included) that holds at least two children, e.g. ``model.model[i]`` of a YOLOv5 DetectionModel."""
    queue: List[Tuple[str, nn.Module]] = [("", model)]
    while queue:
        prefix, module = queue.pop(0)
        if isinstance(module, (nn.Sequential, nn.ModuleList)) and len(module) >= 2:
            return [(f"{prefix}.{n}" if prefix else n, m) for n, m in module.named_children()]
        queue.extend((f"{prefix}.{n}" if prefix else n, m) for n, m in module.named_children())
    return [(n, m) for n, m in model.named_children()]


def _detach(value: Any) -> Any:
    """A nested tuple/list/dict of tensors with every tensor detached, in new containers (structure kept): a block
    that writes into a list it was given (YOLOv5's Detect does) cannot change the captured inputs."""
    if isinstance(value, torch.Tensor):
        return value.detach()
    if isinstance(value, (list, tuple)):
        items = [_detach(v) for v in value]
        return type(value)(items) if not hasattr(value, "_fields") else type(value)(*items)
    if isinstance(value, dict):
        return {k: _detach(v) for k, v in value.items()}
    return value


def _capture(model: nn.Module, block: nn.Module, images: torch.Tensor, batch_size: int, what: str) -> List[Any]:
    """Per batch of `images`, the block's positional inputs (what="input") or its output (what="output"), taken
    from a forward pass of `model` that stops as soon as the block has been reached."""
    found: List[Any] = []

    def pre_hook(_module: nn.Module, args: tuple) -> None:
        found.append(_detach(args))
        raise _Stop

    def hook(_module: nn.Module, _args: tuple, output: Any) -> None:
        found.append(_detach(output))
        raise _Stop

    handle = block.register_forward_pre_hook(pre_hook) if what == "input" else block.register_forward_hook(hook)
    try:
        with torch.no_grad():
            for i in range(0, images.shape[0], batch_size):
                before = len(found)
                try:
                    model(images[i:i + batch_size])
                except _Stop:
                    pass
                if len(found) == before:
                    raise RecoveryError("reconstruct_blocks: a block was not reached by the forward pass")
    finally:
        handle.remove()
    return found


class _Block:
    """The learnable state of one block: soft rounding of its layers' weights, log step sizes of the activation
    quantizers it owns, and QDrop on every activation quantizer it runs."""

    def __init__(self, layers: List[nn.Module], owned: List[TensorQuantizer], used: List[TensorQuantizer],
                 drop: float, generator: torch.Generator) -> None:
        self.layers, self.owned, self.used = layers, owned, used
        self.drop, self.generator, self.active = drop, generator, False
        self.soft = True
        self.v: Dict[int, torch.Tensor] = {}
        self.floor: Dict[int, torch.Tensor] = {}
        self.scale: Dict[int, torch.Tensor] = {}
        self.bounds: Dict[int, Tuple[int, int]] = {}
        self.float_weight: Dict[int, torch.Tensor] = {}
        for m in layers:
            scale, lo, hi = scale_and_bounds(m)
            w = m.weight.detach().float()
            view = scale.float().view(-1, *[1] * (w.dim() - 1))
            floor = torch.floor(w / view)
            rest = (w / view - floor).clamp(1e-4, 1 - 1e-4)
            self.v[id(m._weight_quantizer)] = torch.log((rest - GAMMA) / (ZETA - rest)).requires_grad_(True)
            self.floor[id(m._weight_quantizer)] = floor
            self.scale[id(m._weight_quantizer)] = view
            self.bounds[id(m._weight_quantizer)] = (lo, hi)
            self.float_weight[id(m)] = m.weight.detach().clone()
        self.start = {id(q): q.amax.detach().float().clone() for q in owned}
        self.log_scale = {id(q): torch.zeros_like(self.start[id(q)], requires_grad=True) for q in owned}
        self.used_ids = {id(q) for q in used}

    def h(self, key: int) -> torch.Tensor:
        return torch.clamp(torch.sigmoid(self.v[key]) * (ZETA - GAMMA) + GAMMA, 0, 1)

    def codes(self, key: int) -> torch.Tensor:
        lo, hi = self.bounds[key]
        return torch.clamp(self.floor[key] + (self.h(key) >= 0.5).to(self.floor[key].dtype), lo, hi)

    def amax(self, q: TensorQuantizer) -> torch.Tensor:
        return self.start[id(q)] * torch.exp(self.log_scale[id(q)])

    def weight_hook(self, quantizer: TensorQuantizer, _args: tuple, output: Any) -> Any:
        key = id(quantizer)
        if not self.active or key not in self.v:
            return None
        lo, hi = self.bounds[key]
        codes = self.floor[key] + (self.h(key) if self.soft else (self.h(key) >= 0.5).float())
        return (torch.clamp(codes, lo, hi) * self.scale[key]).to(output.dtype)

    def activation_hook(self, quantizer: TensorQuantizer, args: tuple, output: Any) -> Any:
        if not self.active or id(quantizer) not in self.used_ids or not isinstance(output, torch.Tensor) \
                or output is args[0]:
            return None       # not training, a quantizer of another block, or a tied pass-through
        x = args[0]
        if id(quantizer) in self.log_scale:
            y = learnable_fake_tensor_quant(x, self.amax(quantizer).to(x.device), quantizer.num_bits,
                                            quantizer.unsigned, quantizer.narrow_range, quantizer.axis,
                                            quantizer.zero_point)
        else:
            y = output
        if self.drop > 0 and self.soft:
            keep = torch.rand(x.shape, generator=self.generator).to(x.device) >= self.drop
            y = torch.where(keep, y, x)
        return y

    def round_loss(self, b: float) -> torch.Tensor:
        terms = [(1 - (2 * self.h(k) - 1).abs().pow(b)).mean() for k in self.v]
        return torch.stack(terms).mean() if terms else torch.zeros(())

    def params(self) -> Tuple[List[torch.Tensor], List[torch.Tensor]]:
        return list(self.v.values()), list(self.log_scale.values())

    def harden(self) -> None:
        """Write the hard result into the model: weights on the grid, learned amax into the quantizers."""
        with torch.no_grad():
            for m in self.layers:
                key = id(m._weight_quantizer)
                m.weight.data.copy_((self.codes(key) * self.scale[key]).to(m.weight.dtype))
            for q in self.owned:
                q.amax = self.amax(q).detach()

    def restore(self) -> None:
        with torch.no_grad():
            for m in self.layers:
                m.weight.data.copy_(self.float_weight[id(m)])
            for q in self.owned:
                q.amax = self.start[id(q)]


def _quantizers_run(block: nn.Module, args: tuple, activations: List[TensorQuantizer]) -> List[TensorQuantizer]:
    """The activation quantizers a forward pass of `block` on `args` runs, in order of first use."""
    seen: List[TensorQuantizer] = []

    def probe(q: nn.Module, _args: tuple, _output: Any) -> None:
        if not any(q is s for s in seen):
            seen.append(q)
    probes = [q.register_forward_hook(probe) for q in activations]
    try:
        with torch.no_grad():
            block(*_detach(args))
    finally:
        for h in probes:
            h.remove()
    return seen


def _block_error(block: nn.Module, inputs: List[Any], targets: List[Any]) -> float:
    with torch.no_grad():
        errors = [float(_output_error(_leaves(block(*_detach(args))), _leaves(t))) for args, t in zip(inputs, targets)]
    return sum(errors) / max(len(errors), 1)


def reconstruct_blocks(model: nn.Module, data: Iterable, *, blocks: Optional[Sequence[Tuple[str, nn.Module]]] = None,
                       num_images: int = 32, iters: int = 300, batch_size: int = 8, drop: float = 0.5,
                       lr: float = 1e-2, lr_amax: float = 1e-3, reg: float = 1.0, warmup: float = 0.2,
                       beta: Tuple[float, float] = (20.0, 2.0), learn_ranges: bool = True,
                       device: Union[str, torch.device, None] = None, progress: bool = True,
                       seed: int = 0, preprocess: Optional[Callable[[Any], Any]] = None) -> BlockReport:
    """Reconstruct a calibrated model block by block against its float self on `num_images` images from `data`
    (label-free): per block, `iters` Adam steps on minibatches of `batch_size` jointly learn the soft rounding of its
    quantized layers' weights (learning rate `lr`, rounding regulariser `reg` annealed from beta[0] to beta[1]
    after `warmup` of the steps) and, with `learn_ranges`, the log amax of its activation quantizers
    (`lr_amax`), minimising the block's relative output error (error energy / float energy, per output tensor),
    with QDrop's random skipping of activation quantization (probability `drop`). `blocks`: (name, module) pairs in
    forward order, default `default_blocks(model)`; blocks without a quantized layer or activation quantizer to learn
    are skipped. `preprocess` maps a batch to the image tensor (as in `gather_images`). Returns a BlockReport; on
    error or Ctrl-C every block is put back as calibrated.
    """
    start_time = time.perf_counter()
    if device is None:
        first = next(iter(model.parameters()), None)
        device = first.device if first is not None else torch.device("cpu")
    device = torch.device(device)
    missing = uncalibrated_quantizers(model)
    if missing:
        raise RecoveryError(f"reconstruct_blocks: {len(missing)} enabled quantizer(s) have no amax ({missing[:5]}); "
                            "calibrate the model (qdqtorch.calibrate) first")
    blocks = list(blocks) if blocks is not None else default_blocks(model)
    weight_ids = weight_quantizer_ids(model)
    activations = [q for _, q in named_quantizers(model)
                   if id(q) not in weight_ids and q.is_enabled and q.fake_quant]
    plans = []
    for name, block in blocks:
        layers = [m for m in block.modules()
                  if isinstance(getattr(m, "_weight_quantizer", None), TensorQuantizer) and skip_reason(m) is None]
        if layers:
            plans.append((name, block, layers))
    if not plans:
        raise RecoveryError("reconstruct_blocks: no block holds a quantized Conv/Linear layer; run "
                            "qdqtorch.quantize_model and calibrate first")
    images = gather_images(data, num_images, device, who="reconstruct_blocks", preprocess=preprocess)
    n = images.shape[0]
    report = BlockReport(n, iters, drop)
    float_model = copy.deepcopy(model)
    float_blocks = dict(float_model.named_modules())
    generator = torch.Generator().manual_seed(seed)
    was_training = model.training
    grads = [p.requires_grad for p in model.parameters()]
    done: List[_Block] = []
    owned_ids: set = set()
    bar = tqdm(total=len(plans) * iters, desc="block reconstruction", unit="step", disable=not progress)
    flushed = torch.set_flush_denormal(True)   # tiny gradients as denormals slow CPU backward passes ~10x
    handles: List[Any] = []
    try:
        model.eval()
        float_model.eval()
        for p in model.parameters():
            p.requires_grad_(False)
        for name, block, layers in plans:
            inputs = _capture(model, block, images, batch_size, "input")
            with disable_quantization(float_model):
                targets = _capture(float_model, float_blocks[name], images, batch_size, "output")
            # which activation quantizers this block runs (a tied one may also serve other blocks)
            seen = _quantizers_run(block, inputs[0], activations)
            owned = [q for q in seen if id(q) not in owned_ids] if learn_ranges else []
            state = _Block(layers, owned, seen, drop, generator)
            done.append(state)
            owned_ids.update(id(q) for q in owned)
            error_before = _block_error(block, inputs, targets)
            handles = [m._weight_quantizer.register_forward_hook(state.weight_hook) for m in layers]
            handles += [q.register_forward_hook(state.activation_hook) for q in seen]
            v_params, s_params = state.params()
            groups = [{"params": v_params, "lr": lr}] + ([{"params": s_params, "lr": lr_amax}] if s_params else [])
            opt = torch.optim.Adam(groups)
            batches = max(1, math.ceil(n / batch_size))
            first = int(warmup * iters)
            state.active, state.soft = True, True
            for step in range(iters):
                b = int(torch.randint(batches, (1,), generator=generator))
                out = _leaves(block(*_detach(inputs[b])))
                rec = _output_error(out, _leaves(targets[b])) / max(error_before, 1e-12)
                loss = rec
                if step >= first:
                    frac = (step - first) / max(iters - first, 1)
                    loss = loss + reg * state.round_loss(beta[0] + (beta[1] - beta[0]) * frac)
                opt.zero_grad()
                loss.backward()
                opt.step()
                if step % 10 == 0:
                    bar.set_postfix_str(f"{name[-20:]} loss {rec.item():.3g}")
                bar.update(1)
            state.active = False
            for h in handles:
                h.remove()
            handles = []
            state.harden()
            error_after = _block_error(block, inputs, targets)
            kept = error_after <= error_before
            if not kept:    # never leave a block worse than plain rounding with the calibrated ranges
                state.restore()
                error_after = error_before
            report.blocks.append(BlockResult(name, error_before, error_after, len(layers), len(owned), kept))
    except BaseException:
        for h in handles:
            h.remove()
        for state in reversed(done):
            state.restore()
        raise
    finally:
        bar.close()
        if flushed:
            torch.set_flush_denormal(False)
        for p, g in zip(model.parameters(), grads):
            p.requires_grad_(g)
        model.train(was_training)
    report.seconds = time.perf_counter() - start_time
    return report


__all__ = ["reconstruct_blocks", "BlockReport", "BlockResult", "default_blocks"]
