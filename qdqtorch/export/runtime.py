"""Run an exported ONNX file in ONNX Runtime behind an nn.Module, so the same `evaluate` scores it."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence, Union

import numpy as np
import torch
from torch import nn

from ..errors import UsageError, missing_dependency


class OnnxRuntimeModule(nn.Module):
    """forward(x) runs the ONNX model in ONNX Runtime (CPU unless `providers` says otherwise); returns its first
    output as a torch tensor (all outputs when `all_outputs`)."""

    def __init__(self, path: Union[str, Path], providers: Sequence[str] = ("CPUExecutionProvider",),
                 all_outputs: bool = False, threads: int = 0) -> None:
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
        self.session = ort.InferenceSession(str(path), options, providers=list(providers))
        self.input_names = [i.name for i in self.session.get_inputs()]
        self.all_outputs = all_outputs
        self.path = str(path)

    def forward(self, *inputs: torch.Tensor):
        if len(inputs) != len(self.input_names):
            raise UsageError(f"{self.path} takes {len(self.input_names)} input(s) {self.input_names}, "
                             f"got {len(inputs)}")
        feed = {name: np.ascontiguousarray(t.detach().cpu().numpy()) for name, t in zip(self.input_names, inputs)}
        outputs = [torch.from_numpy(o) for o in self.session.run(None, feed)]
        return tuple(outputs) if self.all_outputs else outputs[0]
