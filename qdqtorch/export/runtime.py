"""Run an exported ONNX file in ONNX Runtime behind an nn.Module, so the same `evaluate` scores it."""
from __future__ import annotations

import platform
import warnings
from functools import lru_cache
from pathlib import Path
from typing import Optional, Sequence, Union

import numpy as np
import torch
from torch import nn

from ..errors import UsageError, missing_dependency


@lru_cache(maxsize=1)
def int8_kernels_exact() -> bool:
    """Whether ONNX Runtime's fused int8 CPU kernels compute Q/DQ graphs exactly on this machine.

    On x86 without VNNI (AVX2 only) ORT multiplies uint8 x int8 pairs with VPMADDUBSW, whose int16 sums saturate, so
    the QLinear kernels it fuses Q/DQ into can be far off (cosine 0.98 on a small transformer). VNNI, AMX and
    non-x86 CPUs do not have that problem."""
    if platform.machine().lower() not in ("x86_64", "amd64", "i686", "x86"):
        return True
    try:
        flags = set(Path("/proc/cpuinfo").read_text().split())
    except OSError:
        return True  # not Linux: assume a modern CPU
    return bool(flags & {"avx512_vnni", "avx_vnni", "amx_int8"})


class OnnxRuntimeModule(nn.Module):
    """forward(x) runs the ONNX model in ONNX Runtime (CPU unless `providers` says otherwise); returns its first
    output as a torch tensor (all outputs when `all_outputs`).

    A graph with a fixed batch size (a static-shape export) is run in slices of that size, the last one padded, so
    callers can send any batch. `int8_kernels`: let ORT fuse Q/DQ into its int8 kernels (True), or run the Q/DQ
    arithmetic as written (False: exact, slower); None uses the int8 kernels where they are exact
    (`int8_kernels_exact`) and warns where they are not.
    """

    def __init__(self, path: Union[str, Path], providers: Sequence[str] = ("CPUExecutionProvider",),
                 all_outputs: bool = False, threads: int = 0, int8_kernels: Optional[bool] = None) -> None:
        super().__init__()
        try:
            import onnxruntime as ort
        except ImportError as exc:
            raise missing_dependency("onnxruntime", "OnnxRuntimeModule", "onnx") from exc
        if not Path(path).is_file():
            raise FileNotFoundError(f"ONNX file not found: {path}")
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        if int8_kernels is None:
            int8_kernels = int8_kernels_exact() or "CPUExecutionProvider" not in providers
            if not int8_kernels:
                warnings.warn("OnnxRuntimeModule: this CPU has no VNNI, where ONNX Runtime's int8 kernels saturate "
                              "(uint8 x int8 sums in int16); running the Q/DQ graph without int8 kernel fusion so "
                              "the result is the graph's exact arithmetic (pass int8_kernels=True to see the fused "
                              "kernels' output)", stacklevel=2)
        if not int8_kernels:
            options.add_session_config_entry("session.disable_quant_qdq", "1")
        self.int8_kernels = int8_kernels
        self.session = ort.InferenceSession(str(path), options, providers=list(providers))
        self.input_names = [i.name for i in self.session.get_inputs()]
        first = self.session.get_inputs()[0].shape
        self.fixed_batch = first[0] if first and isinstance(first[0], int) else None
        self.all_outputs = all_outputs
        self.path = str(path)

    def forward(self, *inputs: torch.Tensor):
        if len(inputs) != len(self.input_names):
            raise UsageError(f"{self.path} takes {len(self.input_names)} input(s) {self.input_names}, "
                             f"got {len(inputs)}")
        arrays = [np.ascontiguousarray(t.detach().cpu().numpy()) for t in inputs]
        n = arrays[0].shape[0]
        step = self.fixed_batch or n
        parts = []
        for start in range(0, n, step):
            chunk = [a[start:start + step] for a in arrays]
            pad = step - chunk[0].shape[0]
            if pad:  # a static-batch graph rejects a short last slice: pad with zeros, drop their outputs
                chunk = [np.concatenate([c, np.zeros((pad, *c.shape[1:]), c.dtype)]) for c in chunk]
            out = self.session.run(None, dict(zip(self.input_names, chunk)))
            parts.append([o[:step - pad] for o in out])
        outputs = [torch.from_numpy(np.concatenate(o)) if len(o) > 1 else torch.from_numpy(o[0]) for o in zip(*parts)]
        return tuple(outputs) if self.all_outputs else outputs[0]
