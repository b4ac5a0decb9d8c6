"""Distillation from a frozen float copy: per-block output MSE (forward hooks on same-named modules) plus MSE on
the final outputs, so a quantized detector fine-tunes without labels."""
from __future__ import annotations

import copy
import itertools
import re
from contextlib import contextmanager
from typing import Any, Callable, Dict, Iterable, Iterator, List, Optional, Sequence, Union

import torch
from torch import nn
from tqdm.auto import tqdm

from ..models.outputs import describe_structure
from ..quantize import model_device, named_quantizers, run_batch
from ._util import flatten_tensors, unwrap
from .prepare import _keep_eval
from ..errors import UsageError

Blocks = Union[str, Sequence[str], None]
_STOCHASTIC = (nn.modules.batchnorm._BatchNorm, nn.modules.dropout._DropoutNd, nn.modules.instancenorm._InstanceNorm)


def make_teacher(model: nn.Module) -> nn.Module:
    """A frozen float copy of `model` (quantized or not): deep copy, every quantizer disabled, no gradients,
    normalization and dropout layers always in eval mode. Make it before fine-tuning changes the weights."""
    teacher = copy.deepcopy(unwrap(model))
    for _, q in named_quantizers(teacher):
        q.disable()
    teacher.requires_grad_(False)
    for m in teacher.modules():
        if isinstance(m, _STOCHASTIC) and _keep_eval not in m._forward_pre_hooks.values():
            m.register_forward_pre_hook(_keep_eval)
    return teacher.eval()


def default_blocks(model: nn.Module) -> List[str]:
    """Names of the model's main blocks: the children of its longest nn.Sequential/ModuleList (YOLO's `model.N`),
    or of the model itself when there is none, minus the last one (the head, covered by the final-output term)."""
    model = unwrap(model)
    best_name, best = "", None
    for name, m in model.named_modules():
        if isinstance(m, (nn.Sequential, nn.ModuleList)) and (best is None or len(m) > len(best)):
            best_name, best = name, m
    if best is None or len(best) < 2:
        best_name, best = "", model
    names = [f"{best_name}.{c}" if best_name else c for c, _ in best.named_children()]
    return names[:-1]


def _resolve_blocks(student: nn.Module, teacher: nn.Module, blocks: Blocks) -> List[str]:
    if blocks is None:
        return []
    if isinstance(blocks, str) and blocks == "auto":
        return default_blocks(student)
    patterns = [blocks] if isinstance(blocks, str) else list(blocks)
    student_names = [n for n, _ in student.named_modules() if n]
    teacher_names = {n for n, _ in teacher.named_modules()}
    names: List[str] = []
    for pattern in patterns:
        try:
            regex = re.compile(pattern)
        except re.error as exc:
            raise UsageError(f"DistillationLoss: blocks: invalid regex {pattern!r}: {exc}") from None
        hits = [n for n in student_names if regex.fullmatch(n)]
        if not hits:
            raise UsageError(f"DistillationLoss: blocks pattern {pattern!r} matches no module of the student "
                             f"(re.fullmatch against module names such as {student_names[:3]})")
        names += [n for n in hits if n not in names]
    absent = [n for n in names if n not in teacher_names]
    if absent:
        raise UsageError(f"DistillationLoss: the teacher has no module named {absent[:5]}; build it with "
                         "make_teacher(model) so module names match the student's")
    return names


@contextmanager
def _normalization_in_eval(model: nn.Module) -> Iterator[None]:
    """Temporarily run BatchNorm/dropout layers in eval mode (no running-statistics update while measuring)."""
    saved = [(m, m.training) for m in model.modules() if isinstance(m, _STOCHASTIC)]
    for m, _ in saved:
        m.training = False
    try:
        yield
    finally:
        for m, flag in saved:
            m.training = flag


def _mse(student: torch.Tensor, teacher: torch.Tensor, normalize: bool) -> torch.Tensor:
    diff = (student.float() - teacher.float()).pow(2).mean()
    if normalize:
        diff = diff / teacher.float().pow(2).mean().clamp_min(1e-12)
    return diff


class DistillationLoss(nn.Module):
    """Label-free QAT loss: calling it with a batch runs the frozen teacher (no grad) and the student on it and
    returns ``block_weight * mean per-block MSE + output_weight * MSE of the final outputs``.

    - `student`: the model being fine-tuned (may be wrapped in DistributedDataParallel); not registered as a
      submodule, so `loss.to(device)` moves only the teacher.
    - `teacher`: a float copy with the same module names (`make_teacher(student)` before training).
    - `blocks`: "auto" (`default_blocks`), None (final outputs only), or regexes matched in full against module
      names; each block's output tensors are compared with the teacher's (forward hooks, as yolo_deepstream does).
    - `normalize`: divide each MSE by the teacher tensor's mean square so blocks of any scale weigh alike.
    The teacher runs with the student's train/eval flag (heads that return other structures in training then
    return the same structure) but its normalization layers always in eval mode. After a call, `last` holds the
    terms as floats and `student_output` the student's output.
    """

    def __init__(self, student: nn.Module, teacher: nn.Module, *, blocks: Blocks = "auto", block_weight: float = 1.0,
                 output_weight: float = 1.0, normalize: bool = False) -> None:
        super().__init__()
        if block_weight < 0 or output_weight < 0 or block_weight + output_weight == 0:
            raise UsageError(f"DistillationLoss: weights must be >= 0 and not both 0, got block_weight={block_weight},"
                             f" output_weight={output_weight}")
        object.__setattr__(self, "student", student)  # not a submodule: its parameters belong to the training loop
        self.teacher = teacher
        self.block_weight = float(block_weight)
        self.output_weight = float(output_weight)
        self.normalize = normalize
        inner = unwrap(student)
        self.blocks = _resolve_blocks(inner, teacher, blocks)
        self._features: Dict[str, Dict[str, list]] = {"student": {}, "teacher": {}}
        self._handles = []
        self._recording = False
        for side, model in (("student", inner), ("teacher", teacher)):
            modules = dict(model.named_modules())
            for name in self.blocks:
                self._handles.append(modules[name].register_forward_hook(self._recorder(side, name)))
        self.last: Dict[str, float] = {}
        self.student_output: Any = None

    def _recorder(self, side: str, name: str) -> Callable:
        store = self._features[side]

        def hook(module: nn.Module, args: Any, output: Any) -> None:
            if self._recording:  # the model also runs outside the loss (evaluation): keep nothing then
                store.setdefault(name, []).append(output)
        return hook

    def remove_hooks(self) -> None:
        """Detach the forward hooks from student and teacher (the loss is unusable afterwards)."""
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def _pairwise(self, what: str, student: Any, teacher: Any) -> List[torch.Tensor]:
        s, t = flatten_tensors(student), flatten_tensors(teacher)
        if len(s) != len(t) or any(a.shape != b.shape for a, b in zip(s, t)):
            raise UsageError(f"DistillationLoss: {what} differs between student and teacher: student "
                             f"{describe_structure(student)}, teacher {describe_structure(teacher)}. Is the teacher "
                             "a copy of this model (make_teacher)?")
        return [_mse(a, b.detach(), self.normalize) for a, b in zip(s, t)]

    def forward(self, *args: Any, **kwargs: Any) -> torch.Tensor:
        for store in self._features.values():
            store.clear()
        self.teacher.train(unwrap(self.student).training)
        self._recording = True
        try:
            with torch.no_grad():
                t_out = self.teacher(*args, **kwargs)
            s_out = self.student(*args, **kwargs)
        finally:
            self._recording = False
        self.student_output = s_out
        per_block: Dict[str, torch.Tensor] = {}
        for name in self.blocks:
            s_feats = self._features["student"].get(name, [])
            t_feats = self._features["teacher"].get(name, [])
            terms = self._pairwise(f"the output of block {name!r}", s_feats, t_feats)
            if terms:
                per_block[name] = torch.stack(terms).mean()
        out_terms = self._pairwise("the model output", s_out, t_out)
        found = out_terms + list(per_block.values())
        if not found:
            raise UsageError("DistillationLoss: neither the model output nor the blocks hold floating-point tensors "
                             f"to compare (output: {describe_structure(s_out)})")
        zero = found[0].new_zeros(())
        block_loss = torch.stack(list(per_block.values())).mean() if per_block else zero
        output_loss = torch.stack(out_terms).mean() if out_terms else zero
        loss = self.block_weight * block_loss + self.output_weight * output_loss
        for store in self._features.values():
            store.clear()
        self.last = {"loss": float(loss.detach()), "blocks": float(block_loss.detach()),
                     "output": float(output_loss.detach())}
        self.last_per_block = {k: float(v.detach()) for k, v in per_block.items()}
        return loss

    @torch.no_grad()
    def measure(self, data: Iterable, num_batches: Optional[int] = None, *,
                device: Union[str, torch.device, None] = None, preprocess: Optional[Callable] = None,
                progress: bool = False) -> Dict[str, float]:
        """Mean loss terms over batches (weighted by batch size), with no gradient and normalization layers in
        eval mode so measuring changes nothing; the student keeps its train/eval flag. Batches are as in
        `qdqtorch.calibrate` (tensor, tuple whose first item is the input, or dict)."""
        inner = unwrap(self.student)
        if device is None:
            device = model_device(inner)
        totals: Dict[str, float] = {}
        count = 0
        with _normalization_in_eval(inner):
            for batch in tqdm(itertools.islice(data, num_batches), desc="distillation loss", unit="batch",
                              disable=not progress):
                run_batch(self, batch, torch.device(device), preprocess)
                n = _batch_size(batch)
                for key, value in self.last.items():
                    totals[key] = totals.get(key, 0.0) + value * n
                count += n
        if count == 0:
            raise UsageError("DistillationLoss.measure: the data yielded no batch")
        return {key: value / count for key, value in totals.items()}


def _batch_size(batch: Any) -> int:
    tensors = flatten_tensors(batch)
    return int(tensors[0].shape[0]) if tensors and tensors[0].dim() > 0 else 1
