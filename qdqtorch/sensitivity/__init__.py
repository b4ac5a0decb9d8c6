"""Quantization sensitivity analysis: which layers cost the most accuracy when quantized, and which to keep float.

`run_sensitivity(model, metric, out_dir, SweepSettings(...))` sweeps a calibrated quantized model (quantizers are
toggled in place, every result is journaled so reruns resume), optionally after a fast proxy pass (per-layer SNR /
cosine / MSE against float) and followed by an accuracy-budget search; it writes sensitivity.json (schema in
`qdqtorch.sensitivity.schema`), sensitivity.md, sensitivity.png, sensitivity_proxy.md and sensitivity_config.yaml.
`merge_outputs` combines `--shard` runs; under torchrun the units are split across ranks. `scripts/sensitivity.py`
is the command-line front end.
"""
from .budget import parse_budget, select_within_budget
from .distributed import all_reduce_calibrators, broadcast_amax, distributed_calibrate
from .fingerprint import model_fingerprint
from .jobs import MODES, parse_shard
from .journal import FingerprintMismatch
from .lock import SweepLockedError, sweep_lock
from .metric import Metric, as_metric
from .proxy import ProxyResult, proxy_markdown, proxy_pass
from .result import build_result, spearman
from .runner import SweepSettings, journal_name, merge_outputs, run_sensitivity
from .schema import FORMAT, VERSION, check_result, comparable
from .units import UNIT_KINDS, QuantizerSwitch, Unit, find_units

__all__ = ["run_sensitivity", "merge_outputs", "SweepSettings", "Metric", "as_metric", "find_units", "Unit",
           "QuantizerSwitch", "UNIT_KINDS", "MODES", "proxy_pass", "proxy_markdown", "ProxyResult",
           "select_within_budget", "parse_budget", "parse_shard", "all_reduce_calibrators", "broadcast_amax",
           "distributed_calibrate", "model_fingerprint", "FingerprintMismatch", "build_result", "spearman",
           "check_result", "comparable", "FORMAT", "VERSION", "journal_name", "sweep_lock", "SweepLockedError"]
