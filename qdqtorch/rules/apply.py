"""apply_tensorrt_rules: trace a quantized model, tie quantizers that TensorRT needs on one scale, quantize Concat
inputs (and residual shortcuts with residual="int8"), switch off quantizers in the head's decoding tail."""
from __future__ import annotations

import copy
import warnings
from collections import defaultdict
from typing import Dict, List, Optional, Sequence, Set, Tuple, Union

import torch
from torch import nn

from ..descriptor import QUANT_DESC_8BIT_PER_TENSOR, QuantDescriptor
from ..models.describe import FLOAT_MODULE_CLASSES
from ..nn import TensorQuantizer
from ..quantize.calibrate import model_device
from ..quantize.control import named_quantizers, weight_quantizer_ids
from ..quantize.replace import name_quantizers
from . import ops
from .analysis import Plan, analyze, quantized_source, readers_of
from .rules_report import RulesReport, TiedGroup
from .hook_sites import Placer, add_hook
from .tied import TiedQuantizer
from .trace import Graph, Node, trace_graph
from ..errors import UsageError

_TIED_FIELDS = ("num_bits", "axis", "unsigned", "narrow_range", "fake_quant", "learn_amax", "amax")
_FLOAT_MATMUL_WHY = ("product of two activations (attention): no module holds a quantizer for it, and attention is "
                     "kept float for accuracy as most INT8 deployments do; TensorRT runs it in FP16/FP32 and "
                     "check_qdq reports it as the warning float-activation-matmul")
Location = Tuple[nn.Module, str, str]  # (parent module, attribute, dotted path)


def _locations(model: nn.Module) -> Dict[int, List[Location]]:
    """Every place (parent, attribute) where each quantizer object is registered."""
    found: Dict[int, List[Location]] = defaultdict(list)
    seen: Set[Tuple[int, str]] = set()
    for parent_name, parent in model.named_modules(remove_duplicate=False):
        for attr, child in parent._modules.items():
            if isinstance(child, TensorQuantizer) and (id(parent), attr) not in seen:
                seen.add((id(parent), attr))
                found[id(child)].append((parent, attr, f"{parent_name}.{attr}" if parent_name else attr))
    return found


def _describe(g: Graph, value: int) -> str:
    node = g.producer(value)
    if node is None:
        return f"<{g.values[value].origin or 'tensor'} {value}>"
    if node.kind == "quant":
        return f"{node.meta.get('path', '?')}(...)"
    return f"{node.target}@{node.module or '<model>'}"


def _incompatible(quantizers: Sequence[TensorQuantizer]) -> Optional[str]:
    ref = quantizers[0]
    if ref.axis is not None:
        return f"{ref.label} is per-channel (axis={ref.axis}); only per-tensor activation quantizers can be tied"
    for q in quantizers[1:]:
        for f in _TIED_FIELDS:
            if getattr(q.desc, f) != getattr(ref.desc, f):
                return (f"{q.label} has {f}={getattr(q.desc, f)!r} but {ref.label} has {getattr(ref.desc, f)!r}; "
                        "give them the same descriptor (QuantConfig.overrides) to tie them")
    return None


def _shared_quantizer(objs: List[TensorQuantizer], desc: QuantDescriptor, device: torch.device) -> TensorQuantizer:
    """The one quantizer of a group: the existing one when already tied, else a TiedQuantizer that takes over the
    members' modes, calibrator statistics (merged) and amax (max)."""
    if len(objs) == 1 and isinstance(objs[0], TiedQuantizer):
        return objs[0]
    src = objs[0] if objs else None
    shared = TiedQuantizer(src.desc if src is not None else desc)
    if src is not None:
        if src.calibrator is not None:
            shared.calibrator = copy.deepcopy(src.calibrator)
            for q in objs[1:]:
                same_kind = type(q.calibrator) is type(shared.calibrator)
                if same_kind and q.calibrator.num_collected:
                    shared.calibrator.merge_(q.calibrator)
        shared.set_mode(quant=src.mode.quant, calib=src.mode.calib)
        amaxes = [q.amax for q in objs if q.amax is not None]
        if amaxes and src.desc.amax is None:
            warnings.warn(f"apply_tensorrt_rules: {src.label} and its group were already calibrated; the tied "
                          "quantizer takes the largest amax. Apply the rules before calibration and recalibrate.",
                          stacklevel=3)
            shared.amax = torch.stack([a.detach().float().cpu().reshape(()) for a in amaxes]).max()
    return shared.to(device)


def _reasons(plan: Plan, cls: int, insert: List[int]) -> Tuple[List[str], List[str]]:
    reasons, op_names = [], []
    for node in plan.ops.get(cls, []):
        reasons.append(ops.category(node.target))
        op_names.append(f"{node.target}@{node.module or '<model>'}")
    per_value: Dict[int, int] = defaultdict(int)
    for n in plan.members.get(cls, []):
        per_value[n.inputs[0]] += 1
    for v in insert:
        per_value[v] += 1
    if any(k > 1 for k in per_value.values()):
        reasons.append("shared-tensor")
    if any(v in plan.residual_values for v in per_value):
        reasons.append("residual")
    return sorted(set(reasons)), list(dict.fromkeys(op_names))


def _default_desc(model: nn.Module, weight_ids: Set[int]) -> QuantDescriptor:
    for _, q in named_quantizers(model):
        if id(q) not in weight_ids and q.is_enabled and q.axis is None:
            return q.desc.replace(amax=None)
    return QUANT_DESC_8BIT_PER_TENSOR


def _disable_float_modules(model: nn.Module, float_modules: Sequence[str], report: RulesReport) -> None:
    for name, module in model.named_modules():
        if type(module).__name__ not in float_modules:
            continue
        for sub, q in module.named_modules():
            if isinstance(q, TensorQuantizer) and q.is_enabled:
                q.disable()
                report.disabled.append((f"{name}.{sub}", f"inside {type(module).__name__}, kept float by rule "
                                                          "(float_modules)"))


def _apply_disables(plan: Plan, locations: Dict[int, List[Location]], device: torch.device,
                    report: RulesReport) -> None:
    """Switch off the quantizers the rules want float (fused residual branches, head decoding)."""
    member_ids = {id(n.quantizer) for nodes in plan.members.values() for n in nodes}
    for node, why in plan.disable:
        q = node.quantizer
        for parent, attr, path in locations.get(id(q), []):
            if id(q) in member_ids:  # shared with live sites: switch off only the site the rule is about
                if path.rsplit(".", 1)[0] != node.module:
                    continue
                setattr(parent, attr, TensorQuantizer(q.desc, name=path, disabled=True).to(device))
            report.disabled.append((path, why))
        if id(q) not in member_ids:
            q.disable()


def _apply_group(plan: Plan, cls: int, placer: Placer, locations: Dict[int, List[Location]],
                 hooked: Dict[Tuple[int, str, Optional[int]], TensorQuantizer], desc: QuantDescriptor,
                 device: torch.device, report: RulesReport) -> Optional[TiedGroup]:
    """Give one scale class a single quantizer: replace its members, hook the tensors still unquantized."""
    g = plan.graph
    members, insert = plan.members.get(cls, []), plan.insert.get(cls, [])
    objs = list({id(n.quantizer): n.quantizer for n in members}.values())
    if not insert and len(objs) <= 1:
        return None
    problem = _incompatible(objs) if objs else None
    if problem:
        report.skipped.append((f"tie of {', '.join(q.label for q in objs)}", problem))
        return None
    shared = _shared_quantizer(objs, desc, device)
    sites: List[str] = []
    for q in objs:
        for parent, attr, path in locations.get(id(q), []):
            if parent._modules.get(attr) is q:
                setattr(parent, attr, shared)
            sites.append(path)
    for v in insert:
        placements = placer.place(v, plan.consumer.get(v), exact=v in plan.residual_values)
        if placements is None:
            if v not in plan.optional:
                report.skipped.append((_describe(g, v), "no module makes or receives this tensor, so it cannot be "
                                                        "quantized by a hook; wrap the op that makes it in a module"))
            continue
        for kind, call, index in placements:
            added = add_hook(g.modules[call.module_id], kind, index, shared, hooked)
            if added is None:
                report.skipped.append((f"{call.path}:{kind}", "already quantized by another group"))
            elif added:
                sites.append(f"{call.path or '<model>'}:{kind}" + ("" if index is None else f"[{index}]"))
    sites = list(dict.fromkeys(sites))
    if not sites:
        return None
    shared.name = shared.name or sites[0]
    reasons, op_names = _reasons(plan, cls, insert)
    group = TiedGroup(shared.name, sites, reasons, op_names, shared)
    report.groups.append(group)
    return group


def apply_tensorrt_rules(model: nn.Module, example_input: Union[torch.Tensor, Sequence[torch.Tensor]], *,
                         residual: str = "float", quant_desc: Optional[QuantDescriptor] = None,
                         float_modules: Sequence[str] = FLOAT_MODULE_CLASSES, verify: bool = True) -> RulesReport:
    """Make a quantized model's Q/DQ placement one that TensorRT fuses; call after `quantize_model`, before
    calibration. Changes the model in place and returns a `RulesReport` listing every tied group.

    The model is traced once on `example_input` (any input it accepts; values do not matter), then:
    1. all inputs of each Concat and the quantizers reading its output share one quantizer (one amax), inputs not
       yet quantized get a quantization point at the module that produces them;
    2. MaxPool, Upsample/Resize and reshaping ops: input and output quantizers share one quantizer;
    3. residual Adds: the input that TensorRT fuses into its conv stays float; the shortcut stays float too with
       `residual="float"` (the default), or is quantized with `residual="int8"` (with the quantizer of the other
       consumers of that tensor), which lets TensorRT fuse the Add into the Conv but adds a quantization error that
       every later layer inherits (YOLOv5n: -0.010 mAP50-95 with mse calibration, BENCHMARKS.md §5);
    4. quantizers after the last quantized weighted op (detection-head decoding, sigmoid tails) and inside modules
       whose class name is in `float_modules` (DFL) are disabled; weighted-op outputs are only quantized where a
       Concat or residual needs them in int8;
    5. products of two activations (attention's MatMuls) stay float and are listed in `report.float_ops`.
    Each residual Add is reported as the model now runs it: a shortcut kept float by the rules may still be read as
    int8 when it is (a slice of) a tensor quantized for another consumer, as in YOLOv8's C2f.
    Tying shares one TiedQuantizer object, so calibration (collect_stats / compute_amax / calibrate) sees the union of
    the members' statistics and every member reads the same amax. New quantizers use `quant_desc` (default: the
    descriptor of the model's first activation quantizer). Apply again with the same input before loading a saved
    calibration into a fresh model. The result is traced once more for the residual report; `verify` also reports
    from that trace anything left undone.
    """
    if not any(True for _ in named_quantizers(model)):
        raise UsageError("apply_tensorrt_rules: the model has no TensorQuantizer; run quantize_model first")
    report = RulesReport()
    _disable_float_modules(model, float_modules, report)
    weight_ids = weight_quantizer_ids(model)
    desc = quant_desc if quant_desc is not None else _default_desc(model, weight_ids)
    device = model_device(model)
    g = trace_graph(model, example_input)
    plan = analyze(g, weight_ids, residual)
    locations = _locations(model)
    report.stats = {"traced_ops": sum(n.kind == "op" for n in g.nodes), "quantizer_calls": sum(
        n.kind == "quant" for n in g.nodes), "tail_ops": len(plan.tail), "concats": sum(
        n.kind == "op" and n.target in ops.CONCAT and n.index not in plan.tail for n in g.nodes)}

    _apply_disables(plan, locations, device, report)
    placer = Placer(g, plan)
    hooked: Dict[Tuple[int, str, Optional[int]], TensorQuantizer] = {}
    for cls in sorted(set(plan.members) | set(plan.insert)):
        _apply_group(plan, cls, placer, locations, hooked, desc, device, report)
    name_quantizers(model)
    for group in report.groups:
        group.name = group.quantizer.name
    after = trace_graph(model, example_input)  # what the model now does, for the report and the check
    after_plan = analyze(after, weight_ids, residual)
    _report_residuals(after, after_plan, weight_ids, residual, report)
    for node in after_plan.float_matmuls:
        report.float_ops.append((f"{node.target}@{node.module or '<model>'}", _FLOAT_MATMUL_WHY))
    if verify:
        _verify(after, after_plan, report)
    return report


def _reader(node: Node) -> str:
    """A reader of a tensor for the report: an op, or the module whose input quantizer reads it."""
    if node.kind == "quant":
        return f"input of {node.module or '<model>'}"
    return f"{node.target}@{node.module or '<model>'}"


def _report_residuals(g: Graph, plan: Plan, weight_ids: Set[int], residual: str, report: RulesReport) -> None:
    """Say for each residual Add of the model as it now is whether TensorRT reads its shortcut as int8, and why: a
    shortcut the rules keep float may still be a tensor already quantized for another consumer (YOLOv8 C2f: a Split
    chunk quantized for the Concat, or the previous bottleneck's output quantized for the next conv)."""
    for r in plan.residuals:
        sources = {v: quantized_source(g, v, weight_ids) for v in r.quantize}
        quantized = [s for s in sources.values() if s is not None]
        entry = {"add": f"{r.node.target}@{r.node.module or '<model>'}",
                 "quantized": ", ".join(dict.fromkeys(s.quantizer.name or s.meta.get("path", "?") for s in quantized
                                                      if s.quantizer is not None))
                 if quantized else "none (shortcut float)",
                 "fused": "none (neither input can fuse)" if r.conv is None
                 else f"{g.nodes[r.conv].target}@{g.nodes[r.conv].module}"}
        if not quantized:
            entry["shortcut"] = "float"
            entry["why"] = ("residual='float': the Add reads its shortcut unquantized and runs as its own layer"
                            if residual == "float" else "residual='int8' but the shortcut could not be quantized "
                            "(see the skipped entries): the Add reads it unquantized")
        else:
            entry["shortcut"] = "int8" if len(quantized) == len(sources) else "mixed"
            if residual == "int8":
                entry["why"] = "residual='int8': quantized so that TensorRT fuses the Add into its conv"
            else:
                readers = [_reader(n) for s in quantized for n in readers_of(g, s, r.node.index)]
                direct = all(s.outputs[0] in r.quantize for s in quantized)
                entry["why"] = ("int8 although residual='float': the shortcut is " + ("" if direct else "a slice of ")
                                + "a tensor already quantized for another consumer (" + ", ".join(
                                    dict.fromkeys(readers)) + "), so TensorRT reads it as int8 and can fuse the Add "
                                "into its conv")
        report.residual_adds.append(entry)


def _verify(g: Graph, plan: Plan, report: RulesReport) -> None:
    """Report (from a trace of the model after the rules) Concat inputs / shortcuts still unquantized and classes
    still using several quantizers."""
    for values in plan.insert.values():
        for v in values:
            if v in plan.optional:
                continue
            entry = (_describe(g, v), "still not quantized after applying the rules")
            if entry not in report.skipped and not any(s[0] == entry[0] for s in report.skipped):
                report.skipped.append(entry)
    for nodes in plan.members.values():
        objs = {id(n.quantizer): n.quantizer for n in nodes}
        if len(objs) > 1:
            labels = sorted(q.label for q in objs.values())
            if not any(labels[0] in s[0] for s in report.skipped):
                report.skipped.append((", ".join(labels), "still separate quantizers on one scale class"))
